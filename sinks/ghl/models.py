"""Small typed views of what apro-sync sends to and reads from GoHighLevel (only the fields we use).

Inputs (`ContactInput`, `CustomFieldValue`) know their wire form; outputs are parsed leniently from API answers
(`extra="ignore"`) because GoHighLevel adds fields freely and its spec is loose about response shapes.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def wire_value(value: object) -> str:
    """Custom-field values travel as strings: dates as YYYY-MM-DD, money as a plain decimal with 2 places.

    A string matches the spec's TextField/LargeTextField item (the Monetory/Numeric items declare `object`),
    and GoHighLevel parses strings for DATE, MONETORY and NUMERICAL fields.
    """
    if isinstance(value, datetime):
        raise TypeError("custom field dates must be `date`, not `datetime`")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.quantize(Decimal("0.01")), "f")
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("custom field values must be str, int, Decimal or date")
    return str(value)


class CustomFieldValue(_In):
    id: str = Field(min_length=1)  # the location's custom-field id (from resolve_ids)
    value: str | int | Decimal | date
    key: str | None = None  # optional; GHL matches by id

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.key:
            out["key"] = self.key
        out["field_value"] = wire_value(self.value)
        return out


class ContactInput(_In):
    """Contact fields apro-sync writes. No `tags`: upsert/update would replace all of them (use add_tags)."""

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None  # E.164 preferred
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    date_of_birth: date | None = None
    timezone: str | None = None
    source: str | None = None
    custom_fields: tuple[CustomFieldValue, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        names = {
            "first_name": "firstName", "last_name": "lastName", "email": "email", "phone": "phone",
            "address1": "address1", "city": "city", "state": "state", "postal_code": "postalCode",
            "country": "country", "timezone": "timezone", "source": "source",
        }
        body: dict[str, Any] = {wire: getattr(self, attr) for attr, wire in names.items() if getattr(self, attr)}
        if self.date_of_birth is not None:
            body["dateOfBirth"] = self.date_of_birth.isoformat()
        if self.custom_fields:
            body["customFields"] = [cf.to_wire() for cf in self.custom_fields]
        return body


class Contact(_Out):
    id: str
    phone: str | None = None
    email: str | None = None
    tags: tuple[str, ...] = ()


class UpsertResult(_Out):
    contact_id: str
    new: bool
    # GHL may drop the phone when the email already belongs to another contact (documented upsert behaviour)
    phone_dropped: bool = False
    contact: dict[str, Any] = Field(default_factory=dict, repr=False)  # raw answer; PHI: never log it


class Note(_Out):
    id: str
    body: str = Field(default="", repr=False)
    date_added: str | None = Field(default=None, alias="dateAdded")


class Opportunity(_Out):
    id: str
    name: str | None = Field(default=None, repr=False)
    pipeline_id: str | None = Field(default=None, alias="pipelineId")
    stage_id: str | None = Field(default=None, alias="pipelineStageId")
    status: str | None = None
    monetary_value: Decimal | None = Field(default=None, alias="monetaryValue")
    contact_id: str | None = Field(default=None, alias="contactId")
    # True when the create call failed (422/5xx/timeout) but the opportunity was found to exist afterwards
    recovered: bool = False

    @field_validator("monetary_value", mode="before")
    @classmethod
    def _money(cls, value: object) -> object:
        if value is None or value == "":
            return None
        return Decimal(str(value))  # via str: never keep binary-float noise


class Stage(_Out):
    id: str
    name: str


class Pipeline(_Out):
    id: str
    name: str
    stages: tuple[Stage, ...] = ()


class CustomFieldDef(_Out):
    id: str
    name: str
    field_key: str | None = Field(default=None, alias="fieldKey")
    data_type: str | None = Field(default=None, alias="dataType")
    model: str | None = None
    parent_id: str | None = Field(default=None, alias="parentId")


class Workflow(_Out):
    id: str
    name: str
    status: str | None = None
