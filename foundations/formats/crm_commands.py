"""Declarative CRM operations: what the sync planner asks the GoHighLevel sink to do.

Every op is absolute (executing it twice equals once), addressed by a stable `op_id` so the effects ledger can
record which ops are done, and free of CRM ids (the executor resolves them from `ClientState.crm`).
The executor contract per op kind is in docs/sync-engine.md, "Module notes"."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from foundations.formats import crm_fields
from foundations.formats.crm_fields import DataType


class OpKind(StrEnum):
    UPSERT_CONTACT = "upsert_contact"
    ADD_NOTE = "add_note"
    UPSERT_OPPORTUNITY = "upsert_opportunity"
    ADD_TAGS = "add_tags"
    ENROLL_WORKFLOW = "enroll_workflow"


EVENT_MARKER_PREFIX = "apro-event: "
PATIENT_TAG = "apro-patient"
MEMBER_TAG = "apro-member"  # added when a membership is active; sticky like PATIENT_TAG (docs/sync-rules.md)
DND_CHANNELS = ("Email", "SMS", "Call")  # DndSettingsSchema channels apro-sync owns (AestheticsPro's opt-outs)
DND_MESSAGE = "Opted out in AestheticsPro"
DndStatus = Literal["active", "inactive"]


def op_id_for(event_id: str, kind: OpKind, ordinal: int) -> str:
    return f"{event_id}:{kind.value}:{ordinal}"


def event_marker(event_id: str) -> str:
    """The line every audit note carries, so the executor can find a note it already wrote."""
    return f"{EVENT_MARKER_PREFIX}{event_id}"


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    op_id: str
    event_id: str
    client_id: str  # AestheticsPro client id (the state key)
    location_label: str  # the GoHighLevel target location (key of ClientState.crm)


class ContactFields(BaseModel):
    """GoHighLevel standard contact fields, named as in UpsertContactDto. None = not sent (left as is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    firstName: str | None = None
    lastName: str | None = None
    email: str | None = None
    phone: str | None = None  # E.164
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    dateOfBirth: str | None = None  # YYYY-MM-DD

    def to_body(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


CustomValue = str | Decimal


class UpsertContact(_Op):
    kind: Literal[OpKind.UPSERT_CONTACT] = OpKind.UPSERT_CONTACT
    standard: ContactFields = ContactFields()
    # logical key (foundations/formats/crm_fields.py) → absolute value: str for TEXT, "YYYY-MM-DD" for DATE, Decimal for
    # MONETORY; "" clears a TEXT or DATE field.
    custom: dict[str, CustomValue] = Field(default_factory=dict)
    # GoHighLevel DND per channel ("active" = do not disturb = opted out), only for the channels AestheticsPro
    # said something about; absent channels are left as they are in GoHighLevel. Sent as `dndSettings`.
    dnd: dict[Literal["Email", "SMS", "Call"], DndStatus] = Field(default_factory=dict)

    def dnd_settings(self) -> dict[str, dict[str, str]]:
        """The `dndSettings` body (DndSettingsSchema of the vendored contacts spec)."""
        out: dict[str, dict[str, str]] = {}
        for channel in DND_CHANNELS:
            status = self.dnd.get(channel)  # type: ignore[call-overload]
            if status is not None:
                out[channel] = {"status": status, **({"message": DND_MESSAGE} if status == "active" else {})}
        return out

    @field_validator("custom", mode="before")
    @classmethod
    def _typed_by_catalog(cls, value: Any) -> Any:
        """Known keys only; MONETORY values become Decimal (also after a JSON round trip), others str."""
        if not isinstance(value, dict):
            return value
        typed: dict[str, CustomValue] = {}
        for key, raw in value.items():
            field = crm_fields.BY_KEY.get(key)
            if field is None:
                raise ValueError("custom field key not in the catalog")
            if field.data_type is DataType.MONETORY:
                if isinstance(raw, float):
                    raise ValueError("money must be Decimal or str, never float")
                typed[key] = Decimal(str(raw))
            else:
                if not isinstance(raw, str):
                    raise ValueError("TEXT and DATE custom values are strings")
                typed[key] = raw
        return typed

    @property
    def identifies_contact(self) -> bool:
        """Whether POST /contacts/upsert can match/create the contact (GHL needs an email or a phone)."""
        return bool(self.standard.email or self.standard.phone)


class AddNote(_Op):
    kind: Literal[OpKind.ADD_NOTE] = OpKind.ADD_NOTE
    body: str = Field(repr=False)  # PHI-bearing: never log it

    @property
    def marker(self) -> str:
        return event_marker(self.event_id)


class UpsertOpportunity(_Op):
    kind: Literal[OpKind.UPSERT_OPPORTUNITY] = OpKind.UPSERT_OPPORTUNITY
    pipeline: str = crm_fields.PIPELINE_NAME
    stage: str  # logical stage name (crm_fields.STAGE_*)
    status: Literal["open", "won"]
    monetary_value: Decimal | None = None  # None: leave the value unchanged
    name: str = Field(repr=False)  # the contact's name: PHI


class AddTags(_Op):
    kind: Literal[OpKind.ADD_TAGS] = OpKind.ADD_TAGS
    tags: tuple[str, ...]


class EnrollWorkflow(_Op):
    kind: Literal[OpKind.ENROLL_WORKFLOW] = OpKind.ENROLL_WORKFLOW
    workflow: str  # logical workflow name (crm_fields.WORKFLOW_*)


CrmOp = Annotated[
    UpsertContact | AddNote | UpsertOpportunity | AddTags | EnrollWorkflow, Field(discriminator="kind")
]

__all__ = [
    "AddNote",
    "AddTags",
    "ContactFields",
    "CrmOp",
    "CustomValue",
    "EVENT_MARKER_PREFIX",
    "EnrollWorkflow",
    "OpKind",
    "DND_CHANNELS",
    "DND_MESSAGE",
    "MEMBER_TAG",
    "PATIENT_TAG",
    "UpsertContact",
    "UpsertOpportunity",
    "event_marker",
    "op_id_for",
]
