"""Drift between a client's state and what GoHighLevel shows of the fields apro-sync owns. Pure: no I/O.

`expected(state, label)` is what the state says GoHighLevel must show; `observed(...)` reads a contact and its
opportunity the same way; `drift(...)` names the fields that differ (names only, never values); `repair_ops`
turns them into ordinary executor ops (streams/crm_ops.py). Rules: docs/operations.md "Reconcile".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from foundations.formats import crm_fields
from foundations.formats.crm_fields import DataType
from foundations.formats.crm_commands import (
    DND_CHANNELS, MEMBER_TAG, PATIENT_TAG, AddTags, ContactFields, CrmOp, OpKind, UpsertContact, UpsertOpportunity,
    op_id_for,
)
from foundations.formats.normalized import MembershipStatus
from streams.plan.planner import IDENTITY_FIELDS, dnd_of
from streams.plan.state import ClientState

OPP_STAGE, OPP_STATUS, OPP_VALUE = "opportunity.stage", "opportunity.status", "opportunity.monetary_value"
TAG_PATIENT = f"tag.{PATIENT_TAG}"
TAG_MEMBER = f"tag.{MEMBER_TAG}"
DND_PREFIX = "dnd."  # + GoHighLevel DND channel (Email, SMS, Call): `dnd.Email`
CONTACT_MISSING = "contact.missing"  # the recorded contact is gone from GoHighLevel (deleted or merged)
CENTS = Decimal("0.01")


@dataclass(frozen=True)
class Expected:
    """What GoHighLevel must show for one client in one location. `stage` is a logical stage name."""

    custom: Mapping[str, str]  # crm_fields key → canonical value ("" = empty)
    stage: str | None = None  # None: apro-sync manages no opportunity for this client
    status: str | None = None
    monetary_value: Decimal | None = None  # None: not written by apro-sync (not a patient yet)
    patient_tag: bool = False
    member_tag: bool = False  # an active membership: the sticky member tag must be there
    dnd: Mapping[str, str] = field(default_factory=dict)  # DND channel → "active" | "inactive" (opt-outs known)


@dataclass(frozen=True)
class Observed:
    custom: Mapping[str, str]  # crm_fields key → canonical value
    tags: frozenset[str] = frozenset()
    dnd: Mapping[str, str] = field(default_factory=dict)  # DND channel → status as GoHighLevel shows it
    opportunity: bool = False
    stage: str | None = None  # logical stage name, None when the stage id is unknown
    status: str | None = None
    monetary_value: Decimal | None = None
    contact_found: bool = True


@dataclass
class DriftCounts:
    """Per-field drift counts for a location: field names and numbers only (no PHI)."""

    clients: int = 0  # compared
    skipped: int = 0  # pending or parked effects, or no contact recorded: not compared
    drifted_clients: int = 0
    fields: dict[str, int] = field(default_factory=dict)

    def add(self, names: Iterable[str]) -> None:
        names = list(names)
        self.clients += 1
        if names:
            self.drifted_clients += 1
        for name in names:
            self.fields[name] = self.fields.get(name, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.fields.values())


def canonical(key: str, value: object) -> str:
    """A custom-field value as apro-sync writes it: money with 2 places, dates YYYY-MM-DD (epoch ms too)."""
    if value is None:
        return ""
    spec = crm_fields.BY_KEY.get(key)
    text = str(value).strip()
    if not text or spec is None:
        return text
    if spec.data_type is DataType.MONETORY:
        try:
            return format(Decimal(text).quantize(CENTS), "f")
        except InvalidOperation:
            return text
    if spec.data_type is DataType.DATE:
        if text.isdigit() and len(text) >= 11:  # GoHighLevel may answer DATE fields as epoch milliseconds
            return datetime.fromtimestamp(int(text) / 1000, timezone.utc).date().isoformat()
        return text[:10]
    return text


def needs_comparison(state: ClientState, label: str) -> bool:
    """A client whose effects are all done and that has a contact in the location (else: skipped)."""
    ids = state.crm.get(label)
    if ids is None or not ids.contact_id:
        return False
    return not state.effects and not state.failed


def expected(state: ClientState) -> Expected:
    custom = {key: canonical(key, reg.value) for key, reg in state.custom.items() if key in crm_fields.BY_KEY}
    if state.invoices:
        custom[crm_fields.PATIENT_LIFETIME_VALUE.key] = canonical(
            crm_fields.PATIENT_LIFETIME_VALUE.key, state.lifetime_value
        )
    nv = state.next_visit
    custom[crm_fields.NEXT_VISIT_DATE.key] = nv.date.isoformat() if nv else ""
    custom[crm_fields.NEXT_VISIT_SERVICE.key] = nv.service if nv else ""
    stage = state.stage.value if state.stage else (crm_fields.STAGE_PATIENT if state.patient else None)
    return Expected(
        custom=custom, stage=stage,
        status=None if stage is None else ("won" if state.patient else "open"),
        monetary_value=state.lifetime_value.quantize(CENTS) if state.patient and stage else None,
        patient_tag=state.patient,
        member_tag=any(m.status is MembershipStatus.ACTIVE for m in state.memberships.values()),
        dnd=dnd_of(state.consent),
    )


def observed_dnd(contact: Mapping[str, Any]) -> dict[str, str]:
    """`dndSettings` (DndSettingsSchema) → channel → status; a channel without a setting is not DND."""
    settings = contact.get("dndSettings")
    out: dict[str, str] = {}
    for channel in DND_CHANNELS:
        entry = settings.get(channel) if isinstance(settings, Mapping) else None
        status = entry.get("status") if isinstance(entry, Mapping) else None
        status = str(status).strip().lower() if status else "inactive"
        out[channel] = "active" if status == "permanent" else status  # a stricter DND staff set is still DND
    return out


def observed(contact: Mapping[str, Any] | None, opportunity: Mapping[str, Any] | None, *,
             field_keys: Mapping[str, str], stage_names: Mapping[str, str]) -> Observed:
    """`contact` as GET /contacts/{id} answers it (None: not found); `opportunity` as the search answers it.
    `field_keys`: GHL custom-field id → crm_fields key; `stage_names`: GHL stage id → logical stage name."""
    if contact is None:
        return Observed(custom={}, contact_found=False)
    custom: dict[str, str] = {}
    for entry in contact.get("customFields") or []:
        if not isinstance(entry, Mapping):
            continue
        key = field_keys.get(str(entry.get("id")))
        if key is not None:
            custom[key] = canonical(key, entry.get("value", entry.get("field_value")))
    tags = frozenset(str(t).strip().lower() for t in contact.get("tags") or [])
    dnd = observed_dnd(contact)
    if opportunity is None:
        return Observed(custom=custom, tags=tags, dnd=dnd)
    value = opportunity.get("monetaryValue")
    return Observed(
        custom=custom, tags=tags, dnd=dnd, opportunity=True,
        stage=stage_names.get(str(opportunity.get("pipelineStageId"))),
        status=opportunity.get("status"),
        monetary_value=None if value is None else Decimal(str(value)).quantize(CENTS),
    )


def drift(want: Expected, seen: Observed) -> list[str]:
    """The names of the fields that differ (sorted); an empty string and an absent value are the same."""
    if not seen.contact_found:
        return [CONTACT_MISSING]
    # Only the fields the state has written: a catalog field apro-sync never wrote may hold an older
    # integration's value, and clearing it would destroy data.
    out = [key for key in sorted(want.custom) if want.custom[key] != seen.custom.get(key, "")]
    if want.stage is not None:
        if not seen.opportunity or seen.stage != want.stage:
            out.append(OPP_STAGE)
        if not seen.opportunity or seen.status != want.status:
            out.append(OPP_STATUS)
        if want.monetary_value is not None and (not seen.opportunity or seen.monetary_value != want.monetary_value):
            out.append(OPP_VALUE)
    out += [f"{DND_PREFIX}{channel}" for channel, status in sorted(want.dnd.items())
            if seen.dnd.get(channel, "inactive") != status]
    if want.patient_tag and PATIENT_TAG not in seen.tags:
        out.append(TAG_PATIENT)
    if want.member_tag and MEMBER_TAG not in seen.tags:
        out.append(TAG_MEMBER)
    return out


def repair_ops(state: ClientState, label: str, names: Iterable[str], run_id: str) -> list[CrmOp]:
    """Executor ops that write the state's values for the drifted `names` (absolute, safe to repeat).

    A missing contact gets every field again, with the identity fields, so the executor finds or recreates
    it by email/phone."""
    names = set(names)
    want = expected(state)
    event_id = f"reconcile-{run_id}"
    base = {"event_id": event_id, "client_id": state.client_id, "location_label": label}
    missing = CONTACT_MISSING in names
    ops: list[CrmOp] = []
    keys = sorted(want.custom) if missing else sorted(names & set(want.custom))
    dnd = {channel: status for channel, status in want.dnd.items() if missing or f"{DND_PREFIX}{channel}" in names}
    if keys or dnd or missing:
        values: dict[str, Any] = {}
        for key in keys:
            value = want.custom[key]
            if key == crm_fields.PATIENT_LIFETIME_VALUE.key or crm_fields.BY_KEY[key].data_type is DataType.MONETORY:
                values[key] = Decimal(value) if value else Decimal("0")
            else:
                values[key] = value
        standard = ContactFields(**{k: state.contact[k].value for k in IDENTITY_FIELDS if k in state.contact})
        ops.append(UpsertContact(op_id=op_id_for(event_id, OpKind.UPSERT_CONTACT, 0), standard=standard,
                                 custom=values, dnd=dnd, **base))
    if want.stage is not None and (missing or names & {OPP_STAGE, OPP_STATUS, OPP_VALUE}):
        assert want.status in ("open", "won")
        name = " ".join(state.contact[k].value for k in ("firstName", "lastName") if k in state.contact)
        ops.append(UpsertOpportunity(op_id=op_id_for(event_id, OpKind.UPSERT_OPPORTUNITY, 0), stage=want.stage,
                                     status=want.status, monetary_value=want.monetary_value,
                                     name=name or f"AestheticsPro client {state.client_id}", **base))
    tags = [
        tag
        for tag, wanted, name in (
            (PATIENT_TAG, want.patient_tag, TAG_PATIENT),
            (MEMBER_TAG, want.member_tag, TAG_MEMBER),
        )
        if wanted and (missing or name in names)
    ]
    if tags:
        ops.append(AddTags(op_id=op_id_for(event_id, OpKind.ADD_TAGS, 0), tags=tuple(tags), **base))
    return ops


__all__ = [
    "CONTACT_MISSING",
    "DND_PREFIX",
    "DriftCounts",
    "Expected",
    "OPP_STAGE",
    "OPP_STATUS",
    "OPP_VALUE",
    "Observed",
    "TAG_MEMBER",
    "TAG_PATIENT",
    "canonical",
    "drift",
    "expected",
    "needs_comparison",
    "observed",
    "repair_ops",
]
