"""Turns the planner's CRM ops (foundations/formats/crm_commands.py) into GoHighLevel calls, one op at a time.

`OpExecutor.execute(op, state, in_doubt=...)` performs one op and returns the state with any new CRM id; retries
of whole events belong to the sink agent. Errors: `GhlTransientError` (retry later), `GhlPermanentError` or
`SyncError` (dead-letter). Exactly-once per op and identity checks: docs/sync-engine.md, "Module notes"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from foundations.formats import crm_fields
from foundations.formats.crm_commands import (
    AddNote,
    AddTags,
    CrmOp,
    EnrollWorkflow,
    OpKind,
    UpsertContact,
    UpsertOpportunity,
    event_marker,
)
from foundations.metrics import SYNC_IDENTITY_CONFLICTS, SYNC_IN_DOUBT
from sinks.errors import IdentityConflict, SyncError
from sinks.ghl.client import GhlClient
from sinks.ghl.errors import GhlPermanentError, GhlRateLimited, GhlTransientError
from sinks.ghl.models import Note
from sinks.provision import ResolvedIds
from streams.plan.state import ClientState, CrmIds, record_contact_id, record_opportunity_id

log = logging.getLogger("apro_sync.sink.executor")

# The audit note goes last: once it is in GoHighLevel, every other effect of its event is too, so the note's
# marker is the event's durable "done" record on the CRM side (used to settle in-doubt enrollments).
_RANK = {
    OpKind.UPSERT_CONTACT: 0,
    OpKind.UPSERT_OPPORTUNITY: 1,
    OpKind.ADD_TAGS: 2,
    OpKind.ENROLL_WORKFLOW: 3,
    OpKind.ADD_NOTE: 4,
}
STAGE_KEYS = {
    crm_fields.STAGE_NEW_LEAD: "new_lead",
    crm_fields.STAGE_BOOKED: "booked",
    crm_fields.STAGE_CANCEL_NO_SHOW: "cancel_no_show",
    crm_fields.STAGE_PATIENT: "patient",
}
WORKFLOW_KEYS = {
    crm_fields.WORKFLOW_APPOINTMENTS_UPDATE: "appointments_update", crm_fields.WORKFLOW_INVOICE_PAID: "invoice_paid",
    crm_fields.WORKFLOW_BIRTHDAY: "birthday",
}
_NOT_FOUND = (400, 404)  # GHL answers 400 "Contact not found" (and sometimes 404) for a deleted object
CONFLICT_MARKER_PREFIX = "apro-conflict: "  # + the other client's id: one staff note per contact and client


def conflict_note(owner: str, other: str, shared: str, *, separate: bool) -> str:
    """Staff note on a contact another patient collides with: client ids and the shared field's name only."""
    outcome = ("a separate contact was created for them" if separate else
               "their events are held for review (dead letter, reason \"identity conflict\")")
    return "\n".join([
        f"AestheticsPro: another patient shares this contact's {shared}",
        f"AestheticsPro client {other} has the same {shared} as this contact (AestheticsPro client {owner}).",
        f"Their events are not written to this contact: {outcome}.",
        f"{CONFLICT_MARKER_PREFIX}{other}",
    ])


def execution_order(ops: Sequence[CrmOp]) -> list[CrmOp]:
    """The ops of ONE event in execution order: contact first, audit note last (stable within a kind)."""
    return sorted(ops, key=lambda op: _RANK[op.kind])


def ordered_pending(state: ClientState) -> list[CrmOp]:
    """Every pending op of the state: events oldest first, each event's remaining ops in `execution_order`."""
    return [op for entry in state.effects for op in execution_order(entry.remaining)]


def ambiguous(error: GhlTransientError) -> bool:
    """Whether a failed call may still have been applied by GoHighLevel (timeout, 5xx), as opposed to surely
    rejected (429) or never sent (connection refused)."""
    if isinstance(error, GhlRateLimited):
        return False
    return not error.reason.startswith("connection error (Connect")


@dataclass
class _EventMemo:
    """Per-event lookups shared by its ops (one notes listing per in-doubt event)."""

    notes: dict[str, list[Note]] = field(default_factory=dict)


class OpExecutor:
    """Executes ops for one GoHighLevel location."""

    def __init__(self, client: GhlClient, once: GhlClient, ids: ResolvedIds, location_label: str) -> None:
        self.client = client  # retries transient errors itself
        self.once = once  # same limiter, no automatic retries: for the non-idempotent calls
        self.ids = ids
        self.label = location_label  # key of ClientState.crm (the GHL location id)
        self._memo: dict[str, _EventMemo] = {}
        self._warned_fields: set[str] = set()
        # Search-then-upsert of new contacts, one at a time in this worker: two clients sharing a phone must not
        # both find "no contact" and then both upsert into one.
        self._identity = asyncio.Lock()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _ids(self, state: ClientState) -> CrmIds:
        return state.crm.get(self.label) or CrmIds()

    def _contact_id(self, state: ClientState) -> str:
        contact_id = self._ids(state).contact_id
        if not contact_id:
            raise SyncError("no GoHighLevel contact id for the client (contact upsert not done)")
        return contact_id

    def custom_fields(self, values: dict[str, object]) -> list[dict[str, object]]:
        """Logical keys → [{id, field_value}]; a field missing in GoHighLevel is skipped (warned once per key)."""
        out: list[dict[str, object]] = []
        for key, value in values.items():
            field_id = self.ids.custom_fields.get(key)
            if field_id is None:
                if key not in self._warned_fields:
                    self._warned_fields.add(key)
                    log.warning("sink: custom field %r missing in GoHighLevel location %s; skipped "
                                "(run `apro-sync provision`)", key, self.ids.ghl_location_id)
                continue
            out.append({"id": field_id, "field_value": value})
        return out

    async def _notes(self, event_id: str, contact_id: str, *, refresh: bool = False) -> list[Note]:
        memo = self._memo.setdefault(event_id, _EventMemo())
        if refresh or contact_id not in memo.notes:
            memo.notes[contact_id] = await self.client.list_notes(contact_id)
        return memo.notes[contact_id]

    async def note_written(self, event_id: str, marker: str, contact_id: str) -> bool:
        notes = await self._notes(event_id, contact_id, refresh=True)
        return any(marker in (n.body or "").splitlines() for n in notes)

    async def _pause(self, error: GhlTransientError, attempt: int) -> None:
        # A 429 already paused the location's limiter (the next request waits there): no extra sleep.
        delay = 0.0 if isinstance(error, GhlRateLimited) else self.client.policy.backoff(attempt)
        await self.client._sleep(delay)  # noqa: SLF001 - the client's injectable sleep (tests never wait)

    def forget(self, event_id: str) -> None:
        self._memo.pop(event_id, None)

    # -- entry point -----------------------------------------------------------------------------------------
    async def execute(self, op: CrmOp, state: ClientState, *, in_doubt: bool = False) -> ClientState:
        """Run one op; return the state with new CRM ids recorded (the caller marks the op done)."""
        if isinstance(op, UpsertContact):
            return await self._upsert_contact(op, state)
        if isinstance(op, UpsertOpportunity):
            return await self._upsert_opportunity(op, state)
        if isinstance(op, AddTags):
            await self.client.add_tags(self._contact_id(state), op.tags)
            return state
        if isinstance(op, AddNote):
            await self._add_note(op, state, in_doubt=in_doubt)
            return state
        if isinstance(op, EnrollWorkflow):
            await self._enroll(op, state, in_doubt=in_doubt)
            return state
        raise SyncError(f"unknown op kind {getattr(op, 'kind', type(op).__name__)}")

    # -- ops -------------------------------------------------------------------------------------------------
    async def _upsert_contact(self, op: UpsertContact, state: ClientState) -> ClientState:
        body: dict[str, object] = dict(op.standard.to_body())
        custom = self.custom_fields(dict(op.custom))
        if custom:
            body["customFields"] = custom
        if op.dnd:
            body["dndSettings"] = op.dnd_settings()
        known = self._ids(state).contact_id
        if known:
            try:
                await self.client.update_contact(known, body)
                return state
            except GhlPermanentError as exc:
                # The contact was deleted or merged away in GoHighLevel: find/create it again by email/phone.
                if exc.status not in _NOT_FOUND or not op.identifies_contact:
                    raise
                log.warning("sink: contact id no longer valid in %s (%s); upserting by email/phone",
                            self.label, exc.reason)
                crm = dict(state.crm)
                crm[self.label] = CrmIds()
                state = state.model_copy(update={"crm": crm})
        if not op.identifies_contact:
            raise SyncError("no email or phone to identify the contact")
        async with self._identity:
            found = await self.client.find_duplicate(op.standard.email, op.standard.phone)
            owner = self._owner(found) if found else None
            if found is None or owner is None or owner == op.client_id:
                result = await self.client.upsert_contact(body)
                return record_contact_id(state, self.label, result.contact_id)
            return await self._collision(op, state, body, found, owner)

    def _owner(self, contact: Mapping[str, object]) -> str | None:
        """The AestheticsPro client a GoHighLevel contact belongs to (its APro Client ID field), or None."""
        field_id = self.ids.custom_fields.get(crm_fields.APRO_CLIENT_ID.key)
        for entry in contact.get("customFields") or []:  # type: ignore[union-attr]
            if isinstance(entry, Mapping) and entry.get("id") == field_id:
                value = str(entry.get("value", entry.get("field_value")) or "").strip()
                return value or None
        return None

    async def _collision(self, op: UpsertContact, state: ClientState, body: dict[str, object],
                         found: Mapping[str, object], owner: str) -> ClientState:
        """`found` (another client's contact) is what the upsert would match: never overwrite it."""
        contact_id = str(found["id"])
        email, phone = (found.get("email") or ""), (found.get("phone") or "")
        shared = [name for name, mine, theirs in (
            ("email", (op.standard.email or "").lower(), str(email).lower()),
            ("phone", op.standard.phone or "", str(phone))) if mine and mine == theirs]
        what = " and ".join(shared) or "phone or email"
        separate = self.ids.allow_duplicate_contacts
        await self._conflict_note(op.event_id, contact_id, conflict_note(owner, op.client_id, what, separate=separate),
                                  f"{CONFLICT_MARKER_PREFIX}{op.client_id}")
        if separate:
            log.warning("sink: client %s shares the %s of client %s's contact %s in %s; separate contact created",
                        op.client_id, what, owner, contact_id, self.label)
            result = await self.client.upsert_contact(body, create_new_if_duplicate_allowed=True)
            if result.contact_id == contact_id:  # the setting changed meanwhile: GoHighLevel merged after all
                raise IdentityConflict(f"identity conflict: {what} matches GoHighLevel contact {contact_id} of "
                                       f"AestheticsPro client {owner} (duplicates no longer allowed)")
            return record_contact_id(state, self.label, result.contact_id)
        SYNC_IDENTITY_CONFLICTS.labels(self.client.label).inc()
        raise IdentityConflict(f"identity conflict: {what} matches GoHighLevel contact {contact_id} of "
                               f"AestheticsPro client {owner}; location does not allow duplicate contacts")

    async def _conflict_note(self, event_id: str, contact_id: str, body: str, marker: str) -> None:
        """Once per (contact, other client): a later event of the same client finds the note and adds none."""
        notes = await self._notes(event_id, contact_id, refresh=True)
        if any(marker in (n.body or "").splitlines() for n in notes):
            return
        await self.once.create_note(contact_id, body)

    def _stage_id(self, stage: str) -> str:
        logical = STAGE_KEYS.get(stage, stage)
        stage_id = self.ids.stage_ids.get(logical)
        if not self.ids.pipeline_id or not stage_id:
            raise SyncError(f"not provisioned: pipeline stage {stage!r} missing (run `apro-sync provision`)")
        return stage_id

    async def _upsert_opportunity(self, op: UpsertOpportunity, state: ClientState) -> ClientState:
        stage_id = self._stage_id(op.stage)
        pipeline_id = self.ids.pipeline_id
        assert pipeline_id is not None
        contact_id = self._contact_id(state)
        known = self._ids(state).opportunity_id
        if known:
            try:
                await self.client.update_opportunity(known, stage_id=stage_id, status=op.status,
                                                      monetary_value=op.monetary_value)
                return state
            except GhlPermanentError as exc:
                if exc.status not in _NOT_FOUND:
                    raise
                log.warning("sink: opportunity id no longer valid in %s (%s); searching", self.label, exc.reason)
        # No id recorded (first time, or the mark was lost in a crash): the contact's opportunity in the
        # pipeline, if any, is ours; GoHighLevel allows one per contact and pipeline.
        found = await self.client.search_opportunities(contact_id, pipeline_id)
        if found:
            opp_id = found[0].id
            await self.client.update_opportunity(opp_id, stage_id=stage_id, status=op.status,
                                                  monetary_value=op.monetary_value)
        else:
            created = await self.client.create_opportunity(
                pipeline_id=pipeline_id, stage_id=stage_id, contact_id=contact_id, name=op.name,
                status=op.status, monetary_value=op.monetary_value)
            opp_id = created.id
        return record_opportunity_id(state, self.label, opp_id)

    async def _add_note(self, op: AddNote, state: ClientState, *, in_doubt: bool) -> None:
        contact_id = self._contact_id(state)
        attempt = 0
        check = in_doubt
        while True:
            attempt += 1
            if check and await self.note_written(op.event_id, op.marker, contact_id):
                SYNC_IN_DOUBT.labels(self.label, "add_note", "found").inc()
                return
            try:
                await self.once.create_note(contact_id, op.body)
                return
            except GhlTransientError as exc:
                # The client's own retry would risk a second note: retry here, checking first when ambiguous.
                check = check or ambiguous(exc)
                if attempt >= self.client.policy.max_attempts:
                    raise
                await self._pause(exc, attempt)

    async def _enroll(self, op: EnrollWorkflow, state: ClientState, *, in_doubt: bool) -> None:
        logical = WORKFLOW_KEYS.get(op.workflow, op.workflow)
        workflow_id = self.ids.workflow_ids.get(logical)
        if not workflow_id:
            raise SyncError(f"not provisioned: workflow {op.workflow!r} missing (run `apro-sync provision`)")
        contact_id = self._contact_id(state)
        if in_doubt:
            # The note is the event's last effect: if it is there, this enrollment happened before it.
            if await self.note_written(op.event_id, event_marker(op.event_id), contact_id):
                SYNC_IN_DOUBT.labels(self.label, "enroll_workflow", "found").inc()
                return
            SYNC_IN_DOUBT.labels(self.label, "enroll_workflow", "repeated").inc()
            log.warning("sink: enrollment in doubt for event %s in %s, workflow %r; enrolling (at least once)",
                        op.event_id, self.label, op.workflow)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.once.add_contact_to_workflow(contact_id, workflow_id)
                return
            except GhlTransientError as exc:
                if ambiguous(exc):
                    SYNC_IN_DOUBT.labels(self.label, "enroll_workflow", "repeated").inc()
                    log.warning("sink: enrollment in doubt for event %s in %s, workflow %r (%s); enrolling again "
                                "(at least once)", op.event_id, self.label, op.workflow, exc.reason)
                if attempt >= self.client.policy.max_attempts:
                    raise
                await self._pause(exc, attempt)


def op_kinds(ops: Iterable[CrmOp]) -> list[str]:
    return [op.kind.value for op in ops]


__all__ = ["CONFLICT_MARKER_PREFIX", "OpExecutor", "STAGE_KEYS", "WORKFLOW_KEYS",
           "ambiguous", "conflict_note", "execution_order", "ordered_pending"]
