"""`apro-sync provision`: make a GoHighLevel sub-account ready for apro-sync, and resolve its ids at start.

Missing custom fields are created (idempotent); folders, pipeline, stages and workflows cannot be created
through the API, so they are checked and reported (docs/operations.md, "Module notes"). `resolve_ids` is the
read-only half used at start; matching is pure (`match_ids`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TextIO

from foundations.config import Settings
from foundations.formats import crm_fields
from foundations.formats.crm_fields import CustomField
from sinks.ghl.client import GhlClient
from sinks.ghl.errors import GhlError
from sinks.ghl.models import CustomFieldDef, Pipeline, Workflow
from sinks.locations import GhlTarget, LocationsError, Ref, load_locations
from sinks.oauth import OAuthManager

FOLDER_NOTE = (
    f'Custom fields cannot be put in the "{crm_fields.APRO_FOLDER_NAME}" folder through the API: '
    "POST /locations/{locationId}/customFields has no parentId, and the Custom Fields V2 API (the one with "
    "folders) only supports custom objects and company fields. Move the APro fields into that folder by hand "
    "(Settings > Custom Fields)."
)
CREATE_NOTE = ("Pipelines, stages and workflows cannot be created through the GoHighLevel API: create the missing "
               "ones in GoHighLevel (or load the snapshot), publish the workflows, then run provision again.")


class ProvisioningIncomplete(RuntimeError):
    """The sub-account lacks something apro-sync needs (names the items, never a token)."""


def _norm(name: str | None) -> str:
    # "Cancel / No-Show" and "cancel/no-show" are the same stage
    return "".join((name or "").split()).casefold()


@dataclass(frozen=True)
class ResolvedIds:
    ghl_location_id: str
    custom_fields: Mapping[str, str]  # crm_fields key → GHL custom field id
    pipeline_id: str | None
    stage_ids: Mapping[str, str]  # new_lead | booked | cancel_no_show | patient → stage id
    workflow_ids: Mapping[str, str]  # appointments_update | invoice_paid | birthday → workflow id
    missing: tuple[str, ...] = ()  # human-readable: 'custom field "APro DOB"', 'workflow "APro Birthday"'
    warnings: tuple[str, ...] = ()
    # The location's "Allow Duplicate Contact" setting (GET /locations/{id}); False when it cannot be read.
    allow_duplicate_contacts: bool = False

    def field_id(self, key: str) -> str:
        try:
            return self.custom_fields[key]
        except KeyError:
            raise ProvisioningIncomplete(f"custom field {key!r} is missing in {self.ghl_location_id}; "
                                         "run `apro-sync provision`") from None

    def require(self) -> ResolvedIds:
        if self.missing:
            raise ProvisioningIncomplete(f"GoHighLevel location {self.ghl_location_id} is missing: "
                                         + "; ".join(self.missing) + ". Run `apro-sync provision`.")
        return self


def find_field(spec: CustomField, existing: Iterable[CustomFieldDef]) -> CustomFieldDef | None:
    existing = list(existing)
    for f in existing:
        if f.field_key and f.field_key == spec.field_key:
            return f
    return next((f for f in existing if _norm(f.name) == _norm(spec.name)), None)


def _find(ref: Ref, items: Sequence[Pipeline] | Sequence[Workflow] | Sequence) -> object | None:
    if ref.id:
        return next((i for i in items if i.id == ref.id), None)
    return next((i for i in items if _norm(i.name) == _norm(ref.name)), None)


def match_ids(target: GhlTarget, fields: Sequence[CustomFieldDef], pipelines: Sequence[Pipeline],
              workflows: Sequence[Workflow]) -> ResolvedIds:
    """Pure: the ids apro-sync needs, found in what the API listed, plus what is missing."""
    missing: list[str] = []
    warnings: list[str] = []
    field_ids: dict[str, str] = {}
    for spec in crm_fields.ALL_FIELDS:
        found = find_field(spec, fields)
        if found is None:
            missing.append(f'custom field "{spec.name}"')
            continue
        field_ids[spec.key] = found.id
        if found.data_type and found.data_type != spec.data_type.value:
            warnings.append(f'custom field "{spec.name}" is {found.data_type}, expected {spec.data_type.value}')
    pipeline = _find(target.pipeline, pipelines)
    stage_ids: dict[str, str] = {}
    if pipeline is None:
        missing.append(f"pipeline {target.pipeline}")
    else:
        for logical, ref in target.stages:
            stage = _find(ref, pipeline.stages)  # type: ignore[union-attr]
            if stage is None:
                missing.append(f"stage {ref} in pipeline {target.pipeline}")
            else:
                stage_ids[logical] = stage.id  # type: ignore[attr-defined]
    workflow_ids: dict[str, str] = {}
    for logical, ref in target.workflows:
        wf = _find(ref, workflows)
        if wf is None:
            missing.append(f"workflow {ref}")
            continue
        workflow_ids[logical] = wf.id  # type: ignore[attr-defined]
        status = getattr(wf, "status", None)
        if status and status != "published":
            warnings.append(f"workflow {ref} is {status}, not published: enrolled contacts will not run through it")
    return ResolvedIds(
        ghl_location_id=target.ghl_location_id, custom_fields=field_ids,
        pipeline_id=getattr(pipeline, "id", None), stage_ids=stage_ids, workflow_ids=workflow_ids,
        missing=tuple(missing), warnings=tuple(warnings),
    )


async def resolve_ids(client: GhlClient, target: GhlTarget) -> ResolvedIds:
    """Read-only: list fields, pipelines and workflows of the sub-account and match them (see match_ids)."""
    fields, pipelines, workflows, duplicates = await asyncio.gather(
        client.list_custom_fields("contact"), client.list_pipelines(), client.list_workflows(),
        _allows_duplicates(client))
    ids = match_ids(target, fields, pipelines, workflows)
    if duplicates is None:
        ids = replace(ids, warnings=(*ids.warnings, "cannot read the location's duplicate-contact setting (scope "
                                     "locations.readonly?); identity conflicts are held, never merged"))
    return replace(ids, allow_duplicate_contacts=bool(duplicates))


async def _allows_duplicates(client: GhlClient) -> bool | None:
    try:
        return await client.allows_duplicate_contacts()
    except GhlError:
        return None


class ResolvedIdsCache:
    """One `ResolvedIds` per GoHighLevel location, resolved once (concurrent callers share the lookup)."""

    def __init__(self) -> None:
        self._ids: dict[str, ResolvedIds] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, client: GhlClient, target: GhlTarget) -> ResolvedIds:
        key = target.ghl_location_id
        if (ids := self._ids.get(key)) is not None:
            return ids
        async with self._locks.setdefault(key, asyncio.Lock()):
            if (ids := self._ids.get(key)) is None:
                ids = self._ids[key] = await resolve_ids(client, target)
            return ids

    def invalidate(self, ghl_location_id: str | None = None) -> None:
        if ghl_location_id is None:
            self._ids.clear()
        else:
            self._ids.pop(ghl_location_id, None)


@dataclass
class Row:
    kind: str  # custom field | pipeline | stage | workflow
    name: str
    status: str  # present | created | would create | failed | missing | ok | warning
    detail: str = ""

    @property
    def problem(self) -> bool:
        return self.status in ("missing", "failed", "would create")


@dataclass
class ProvisionReport:
    location: str
    dry_run: bool
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ids: ResolvedIds | None = None

    @property
    def created(self) -> list[str]:
        return [r.name for r in self.rows if r.status == "created"]

    @property
    def problems(self) -> list[Row]:
        return [r for r in self.rows if r.problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = ("KIND", "NAME", "STATUS", "DETAIL")
        body = [(r.kind, r.name, r.status, r.detail) for r in self.rows]
        widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(3)]
        lines = [f"GoHighLevel location {self.location}" + ("  (dry run: nothing created)" if self.dry_run else "")]
        for row in [head, *body]:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row[:3], widths)) + "  " + str(row[3]))
        lines.extend(f"NOTE: {n}" for n in self.notes)
        lines.append("RESULT: ready" if self.ok else f"RESULT: {len(self.problems)} item(s) need attention")
        return "\n".join(lines)


async def provision(client: GhlClient, target: GhlTarget, *, dry_run: bool = False) -> ProvisionReport:
    report = ProvisionReport(location=f"{target.label} ({target.ghl_location_id})"
                             if target.label != target.ghl_location_id else target.ghl_location_id, dry_run=dry_run)
    fields = await client.list_custom_fields("contact")
    for spec in crm_fields.ALL_FIELDS:
        found = find_field(spec, fields)
        if found is not None:
            detail = "" if not found.data_type or found.data_type == spec.data_type.value else (
                f"type {found.data_type}, expected {spec.data_type.value}")
            report.rows.append(Row("custom field", spec.name, "warning" if detail else "present", detail))
            continue
        if dry_run:
            report.rows.append(Row("custom field", spec.name, "would create", spec.data_type.value))
            continue
        try:
            created = await client.create_custom_field(spec.name, spec.data_type.value, "contact")
        except GhlError as exc:
            report.rows.append(Row("custom field", spec.name, "failed", exc.reason))
            continue
        fields.append(created)
        report.rows.append(Row("custom field", spec.name, "created", spec.data_type.value))
    pipelines, workflows = await asyncio.gather(client.list_pipelines(), client.list_workflows())
    ids = match_ids(target, fields, pipelines, workflows)
    report.ids = ids
    report.rows.append(Row("pipeline", str(target.pipeline), "ok" if ids.pipeline_id else "missing",
                           ids.pipeline_id or ""))
    if ids.pipeline_id:
        for logical, ref in target.stages:
            sid = ids.stage_ids.get(logical)
            report.rows.append(Row("stage", str(ref), "ok" if sid else "missing", sid or ""))
    for logical, ref in target.workflows:
        wid = ids.workflow_ids.get(logical)
        draft = next((w for w in ids.warnings if w.startswith(f"workflow {ref} ")), None)
        report.rows.append(Row("workflow", str(ref), ("warning" if draft else "ok") if wid else "missing",
                               (f"{wid} (not published)" if draft else wid) if wid else ""))
    if any(spec.apro_folder for spec in crm_fields.ALL_FIELDS):
        report.notes.append(FOLDER_NOTE)
    if any(r.status == "missing" for r in report.rows if r.kind != "custom field"):
        report.notes.append(CREATE_NOTE)
    return report


async def provision_all(targets: Sequence[GhlTarget], settings: Settings, *, dry_run: bool,
                        out: TextIO) -> int:
    code = 0
    oauth = OAuthManager(settings) if any(t.oauth for t in targets) else None
    for target in targets:
        async with GhlClient(settings.ghl_base_url, target.token, target.ghl_location_id,
                             auth=oauth.auth_for(target) if oauth else None,
                             timeout=settings.ghl_timeout_s, metrics_location=target.label) as client:
            try:
                report = await provision(client, target, dry_run=dry_run)
            except GhlError as exc:
                print(f"GoHighLevel location {target.ghl_location_id}: {exc.reason}", file=out)
                code = 1
                continue
        print(report.render(), file=out)
        print(file=out)
        if not report.ok:
            code = 1
    if oauth is not None:
        await oauth.aclose()
    return code


def run(settings: Settings, dry_run: bool = False, out: TextIO | None = None) -> int:
    """CLI entry: 0 = every sub-account ready, 1 = something missing/failed, 2 = configuration error."""
    out = out or sys.stdout
    try:
        targets = load_locations(settings).targets()
    except LocationsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(provision_all(targets, settings, dry_run=dry_run, out=out))
