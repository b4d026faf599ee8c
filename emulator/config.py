"""Emulator configuration: seeded locations, pipelines, workflows, custom fields, rate limits and faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What a fresh emulated location holds when its configuration names nothing else: the sub-account a practice
# sets up before the first sync (tests/emulator/test_seed.py holds these against the sync's own catalog).
DEFAULT_PIPELINE = "Lead to Patient"
DEFAULT_STAGES = ("New Lead", "Booked", "Cancel/No-Show", "Patient")
DEFAULT_WORKFLOWS = ("APro Appointments Update", "APro Invoice Paid", "APro Birthday")
DEFAULT_FOLDERS = ("Aesthetics Pro",)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageConfig(_Model):
    name: str
    id: str | None = None  # generated (deterministic) when omitted


class PipelineConfig(_Model):
    name: str = DEFAULT_PIPELINE
    id: str | None = None
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(name=n) for n in DEFAULT_STAGES]
    )


class WorkflowConfig(_Model):
    name: str
    id: str | None = None
    status: Literal["draft", "published"] = "published"


class CustomFieldConfig(_Model):
    name: str
    data_type: str = "TEXT"
    id: str | None = None
    field_key: str | None = None  # derived from the name when omitted
    folder: str | None = None  # e.g. "Aesthetics Pro" (parentId of the field in GHL)
    model: Literal["contact", "opportunity"] = "contact"


def _default_workflows() -> list[WorkflowConfig]:
    return [WorkflowConfig(name=n) for n in DEFAULT_WORKFLOWS]


class LocationConfig(_Model):
    id: str
    name: str = "Emulated Med Spa"
    token: str  # Private Integration Token bound to this location
    pipelines: list[PipelineConfig] = Field(default_factory=lambda: [PipelineConfig()])
    workflows: list[WorkflowConfig] = Field(default_factory=_default_workflows)
    custom_fields: list[CustomFieldConfig] = Field(default_factory=list)
    folders: list[str] = Field(default_factory=lambda: list(DEFAULT_FOLDERS))
    # This location's "Allow Duplicate Contact" setting (settings.allowDuplicateContact of GET /locations/{id});
    # None: EmulatorConfig.allow_duplicate_contacts.
    allow_duplicate_contacts: bool | None = None


class RateLimitConfig(_Model):
    burst_max: int = 100  # requests per interval, per location (X-RateLimit-Max)
    interval_ms: int = 10_000  # X-RateLimit-Interval-Milliseconds
    daily_max: int = 200_000  # X-RateLimit-Limit-Daily
    retry_after_s: float | None = None  # send Retry-After on 429 (real GHL: not documented)
    enabled: bool = True


class FaultRule(_Model):
    """One fault. `count` = apply to the next N matching requests; else `probability` per matching request."""

    kind: Literal["status", "timeout", "latency", "created_then_422"]
    status: int = 503  # for kind=status (429, 500, 502, 503 ...)
    retry_after_s: float | None = None  # for status 429: add Retry-After
    latency_ms: int = 0  # for kind=latency
    hold_s: float = 30.0  # for kind=timeout: hold this long, then drop the connection
    count: int | None = None
    probability: float = 0.0
    method: str | None = None  # only requests with this method ...
    path: str | None = None  # ... and this path template (e.g. "/opportunities/")
    location: str | None = None  # ... and this sub-account (location id): one clinic's outage or revoked token


class LatencyConfig(_Model):
    """Random latency added to every API call: lognormal with this median and 99th percentile (p99 == p50: constant)."""

    p50_ms: float = Field(50.0, gt=0)
    p99_ms: float = Field(250.0, gt=0)
    max_ms: float = Field(10_000.0, gt=0)  # cap: one draw never holds a call longer than this
    seed: int = 0  # its own RNG: latency draws do not shift the probabilistic faults' draws

    @model_validator(mode="after")
    def _ordered(self) -> "LatencyConfig":
        if self.p99_ms < self.p50_ms:
            raise ValueError("latency p99_ms must be >= p50_ms")
        return self


class FaultsConfig(_Model):
    seed: int = 0
    latency_ms: int = 0  # fixed latency added to every API call (benchmarks)
    latency: LatencyConfig | None = None  # random latency added to every API call, on top of latency_ms
    rules: list[FaultRule] = Field(default_factory=list)


class OAuthConfig(_Model):
    """The Marketplace app the emulator's OAuth endpoints (emulator/oauth.py) answer for."""

    client_id: str = "emu-oauth-client-id"
    client_secret: str = "emu-oauth-client-secret"
    company_id: str = "emuCompany0000000001"  # the agency every emulated location belongs to
    app_id: str = "emuApp00000000000001"
    access_token_ttl_s: float = Field(default=86399, gt=0)  # GoHighLevel: about a day (expires_in 86399)
    code_ttl_s: float = Field(default=600, gt=0)  # authorization codes: single use, short-lived
    scope: str = "contacts.readonly contacts.write opportunities.readonly opportunities.write " \
                 "locations.readonly locations/customFields.readonly locations/customFields.write workflows.readonly"


class EmulatorConfig(_Model):
    seed: int = 1  # deterministic ids
    locations: list[LocationConfig] = Field(
        default_factory=lambda: [LocationConfig(id="emuLocation000000001", token="pit-emulator-location-1")]
    )
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    # Reproduce GHL's split match: email matches A, phone matches B → A is updated and the phone is dropped.
    upsert_drops_phone_on_split_match: bool = False
    # GHL Location setting "Allow Duplicate Contact" (lets createNewIfDuplicateAllowed create a new contact), for
    # every location that does not set its own.
    allow_duplicate_contacts: bool = False
    # The setting's search sequence: upsert and GET /contacts/search/duplicate match the first field that finds a
    # contact, in this order (POST /contacts/search answers each field's matches oldest first, so a search by
    # the first field that finds any, first hit, names the same contact).
    contact_match_order: tuple[Literal["email", "phone"], ...] = ("email", "phone")
    oauth: OAuthConfig = Field(default_factory=OAuthConfig)
    validate_requests: bool = True
    spec_dir: str | None = None
    max_request_log: int = 10_000

    def allows_duplicates(self, location_id: str) -> bool:
        loc = next((loc for loc in self.locations if loc.id == location_id), None)
        if loc is None or loc.allow_duplicate_contacts is None:
            return self.allow_duplicate_contacts
        return loc.allow_duplicate_contacts

    def location_by_token(self) -> dict[str, LocationConfig]:
        return {loc.token: loc for loc in self.locations}


def load_config(path: str | Path | None) -> EmulatorConfig:
    """YAML or JSON file → EmulatorConfig; None → defaults (one location, seed pipeline and workflows)."""
    if path is None:
        return EmulatorConfig()
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    return EmulatorConfig.model_validate(data)
