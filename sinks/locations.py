"""Which GoHighLevel sub-account (location) each AestheticsPro location syncs into.

Without a locations file one sub-account receives every location; with APRO_LOCATIONS_FILE (YAML or JSON,
docs/locations.example.yaml) locations map by id or name to their own sub-accounts. The file holds no secrets
(`token_env` or `oauth` name the variables; sinks/oauth.py); errors name the bad entry, never a token."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from foundations.config import Settings
from foundations.formats import crm_fields


class LocationsError(ValueError):
    """The locations configuration is invalid; the message names the entry and the problem."""


class UnknownLocation(LookupError):
    """An AestheticsPro location matches no entry and there is no default."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ref(_Model):
    """A GoHighLevel object named either by `id` or by `name` (a bare string means a name)."""

    id: str | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> Ref:
        if bool(self.id) == bool(self.name):
            raise ValueError("give exactly one of `id` or `name`")
        return self

    def __str__(self) -> str:
        return f"id {self.id}" if self.id else repr(self.name)


class StageRefs(_Model):
    new_lead: Ref = Ref(name=crm_fields.STAGE_NEW_LEAD)
    booked: Ref = Ref(name=crm_fields.STAGE_BOOKED)
    cancel_no_show: Ref = Ref(name=crm_fields.STAGE_CANCEL_NO_SHOW)
    patient: Ref = Ref(name=crm_fields.STAGE_PATIENT)


class WorkflowRefs(_Model):
    appointments_update: Ref = Ref(name=crm_fields.WORKFLOW_APPOINTMENTS_UPDATE)
    invoice_paid: Ref = Ref(name=crm_fields.WORKFLOW_INVOICE_PAID)
    birthday: Ref = Ref(name=crm_fields.WORKFLOW_BIRTHDAY)


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class OAuthConfig(_Model):
    """A location installed through a Marketplace app: environment variables holding the install's first refresh
    token and, when not APRO_GHL_OAUTH_CLIENT_ID / _SECRET, the app's client id and secret. `user_type: Company`:
    an agency-level install; the company token (stored once per `company_id`) buys the location's tokens."""

    user_type: Literal["Location", "Company"] = "Location"
    company_id: str | None = None
    refresh_token_env: str | None = Field(default=None, pattern=ENV_NAME)
    client_id_env: str | None = Field(default=None, pattern=ENV_NAME)
    client_secret_env: str | None = Field(default=None, pattern=ENV_NAME)

    @model_validator(mode="after")
    def _company_named(self) -> OAuthConfig:
        if self.user_type == "Company" and not self.company_id:
            raise ValueError("a Company install needs `company_id`")
        return self


@dataclass(frozen=True)
class OAuthCredentials:
    client_id: str
    client_secret: SecretStr
    bootstrap: SecretStr | None  # the install's refresh token; used once, unless the token topic has newer ones
    user_type: str = "Location"
    company_id: str | None = None

    def __repr__(self) -> str:
        return f"OAuthCredentials(client_id={self.client_id!r})"


class TargetConfig(_Model):
    ghl_location_id: str = Field(min_length=1)
    token_env: str | None = Field(default=None, pattern=ENV_NAME)
    oauth: OAuthConfig | None = None
    name: str | None = None  # label for reports and logs
    pipeline: Ref = Ref(name=crm_fields.PIPELINE_NAME)
    stages: StageRefs = StageRefs()
    workflows: WorkflowRefs = WorkflowRefs()

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "token" in value:
            raise ValueError("tokens do not belong in this file: name an environment variable with `token_env`")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> TargetConfig:
        if self.token_env and self.oauth:
            raise ValueError("give either `token_env` (Private Integration) or `oauth` (Marketplace app), not both")
        return self


class LocationEntry(TargetConfig):
    apro: tuple[str, ...] = Field(min_length=1)  # AestheticsPro location ids and/or names

    @field_validator("apro", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, (str, int)):
            value = [value]
        return [str(v).strip() for v in value] if isinstance(value, (list, tuple)) else value


class LocationsFile(_Model):
    default: TargetConfig | None = None
    locations: tuple[LocationEntry, ...] = ()


@dataclass(frozen=True)
class GhlTarget:
    """Everything the sink needs to write to one GoHighLevel sub-account."""

    ghl_location_id: str
    token: SecretStr | None  # Private Integration Token; None for an OAuth location
    label: str
    pipeline: Ref = Ref(name=crm_fields.PIPELINE_NAME)
    stages: StageRefs = StageRefs()
    workflows: WorkflowRefs = WorkflowRefs()
    oauth: OAuthCredentials | None = None

    def __repr__(self) -> str:
        return f"GhlTarget(ghl_location_id={self.ghl_location_id!r}, label={self.label!r})"


class _HasLocation(Protocol):
    id: str | None
    name: str | None


def _norm(value: str) -> str:
    return " ".join(value.split()).casefold()


class Locations:
    """Resolves an AestheticsPro location (id, else name) to its `GhlTarget`."""

    def __init__(self, entries: list[tuple[tuple[str, ...], GhlTarget]], default: GhlTarget | None) -> None:
        self._by_key: dict[str, GhlTarget] = {}
        for keys, target in entries:
            for key in keys:
                self._by_key[_norm(key)] = target
        self.default = default
        self._entries = entries

    def resolve(self, location: _HasLocation | None = None, *, location_id: str | None = None,
                location_name: str | None = None) -> GhlTarget:
        loc_id = location_id or (getattr(location, "id", None) if location is not None else None)
        loc_name = location_name or (getattr(location, "name", None) if location is not None else None)
        for candidate in (loc_id, loc_name):
            if candidate and (target := self._by_key.get(_norm(str(candidate)))) is not None:
                return target
        if self.default is not None:
            return self.default
        raise UnknownLocation(f"AestheticsPro location id={loc_id!r} name={loc_name!r} matches no entry of the "
                              "locations file and there is no `default` entry")

    def targets(self) -> list[GhlTarget]:
        """Each GoHighLevel sub-account once (for provisioning and start-up id resolution)."""
        seen: dict[str, GhlTarget] = {}
        for target in [t for _, t in self._entries] + ([self.default] if self.default else []):
            seen.setdefault(target.ghl_location_id, target)
        return list(seen.values())


def _token(where: str, config: TargetConfig, settings: Settings, env: Mapping[str, str]) -> SecretStr:
    if config.token_env:
        value = env.get(config.token_env, "").strip()
        if not value:
            raise LocationsError(f"{where}.token_env: environment variable {config.token_env} is not set or empty")
        return SecretStr(value)
    if settings.ghl_token is not None and settings.ghl_token.get_secret_value():
        return settings.ghl_token
    raise LocationsError(f"{where}: no `token_env` and APRO_GHL_TOKEN is not set")


def _oauth(where: str, config: OAuthConfig, settings: Settings, env: Mapping[str, str]) -> OAuthCredentials:
    def value(name: str | None, fallback: str | None, setting: str) -> str:
        found = env.get(name, "").strip() if name else (fallback or "")
        if not found:
            raise LocationsError(f"{where}.oauth: " + (f"environment variable {name} is not set or empty" if name
                                                       else f"{setting} is not set"))
        return found

    secret = settings.ghl_oauth_client_secret.get_secret_value() if settings.ghl_oauth_client_secret else None
    refresh = env.get(config.refresh_token_env, "").strip() if config.refresh_token_env else ""
    if config.refresh_token_env is None and settings.ghl_oauth_refresh_token is not None:
        refresh = settings.ghl_oauth_refresh_token.get_secret_value().strip()
    return OAuthCredentials(
        client_id=value(config.client_id_env, settings.ghl_oauth_client_id, "APRO_GHL_OAUTH_CLIENT_ID"),
        client_secret=SecretStr(value(config.client_secret_env, secret, "APRO_GHL_OAUTH_CLIENT_SECRET")),
        bootstrap=SecretStr(refresh) if refresh else None, user_type=config.user_type, company_id=config.company_id)


def _target(where: str, config: TargetConfig, settings: Settings, env: Mapping[str, str]) -> GhlTarget:
    oauth = _oauth(where, config.oauth, settings, env) if config.oauth else None
    return GhlTarget(ghl_location_id=config.ghl_location_id,
                     token=None if oauth else _token(where, config, settings, env),
                     label=config.name or config.ghl_location_id, pipeline=config.pipeline, stages=config.stages,
                     workflows=config.workflows, oauth=oauth)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def parse_locations(data: Any, settings: Settings, env: Mapping[str, str] | None = None) -> Locations:
    env = os.environ if env is None else env
    try:
        parsed = LocationsFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"  {_where(e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False, include_url=False)]
        raise LocationsError("invalid locations file:\n" + "\n".join(problems)) from None
    owner: dict[str, str] = {}
    entries = []
    for i, entry in enumerate(parsed.locations):
        where = f"locations[{i}]"
        for key in entry.apro:
            if not key:
                raise LocationsError(f"{where}.apro: empty AestheticsPro location id/name")
            if (previous := owner.get(_norm(key))) is not None:
                raise LocationsError(f"{where}.apro: {key!r} is already mapped by {previous}")
            owner[_norm(key)] = where
        entries.append((entry.apro, _target(where, entry, settings, env)))
    default = _target("default", parsed.default, settings, env) if parsed.default else None
    if not entries and default is None:
        raise LocationsError("invalid locations file: it has neither `locations` nor a `default` entry")
    return Locations(entries, default)


def read_locations_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LocationsError(f"cannot read locations file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError / JSONDecodeError: position only, not the content
        mark = getattr(exc, "problem_mark", None)
        at = (
            f" (line {mark.line + 1})"
            if mark is not None
            else (f" (line {exc.lineno})" if hasattr(exc, "lineno") else "")
        )
        raise LocationsError(f"locations file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}{at}") from None


def load_locations(settings: Settings, env: Mapping[str, str] | None = None) -> Locations:
    """From APRO_LOCATIONS_FILE when set, else the single sub-account of APRO_GHL_LOCATION_ID / APRO_GHL_TOKEN."""
    if settings.locations_file is not None:
        return parse_locations(read_locations_file(Path(settings.locations_file)), settings, env)
    if not settings.ghl_location_id:
        raise LocationsError("set APRO_GHL_LOCATION_ID and APRO_GHL_TOKEN, or APRO_LOCATIONS_FILE")
    # OAuth when the app's client id is set and no Private Integration Token is.
    oauth = None
    if settings.ghl_oauth_client_id and settings.ghl_token is None:
        oauth = OAuthConfig(user_type="Company", company_id=settings.ghl_oauth_company_id) \
            if settings.ghl_oauth_company_id else OAuthConfig()
    default = TargetConfig(ghl_location_id=settings.ghl_location_id, oauth=oauth)
    return Locations([], _target("settings (APRO_GHL_LOCATION_ID)", default, settings, env or {}))
