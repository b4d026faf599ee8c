"""The emulated CRM data and its rules (pure: no HTTP). Handlers translate `ApiError` into GHL error bodies."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import phonenumbers

from emulator.config import EmulatorConfig, LocationConfig
from emulator.ids import IdGenerator, stable_id

CONTACT_FIELDS = (
    "firstName", "lastName", "name", "email", "phone", "address1", "city", "state", "postalCode", "website",
    "timezone", "dnd", "dndSettings", "inboundDndSettings", "source", "country", "companyName", "assignedTo", "gender",
)
DATA_TYPES = {
    "TEXT", "LARGE_TEXT", "NUMERICAL", "PHONE", "MONETORY", "CHECKBOX", "SINGLE_OPTIONS", "MULTIPLE_OPTIONS",
    "FLOAT", "TIME", "DATE", "TEXTBOX_LIST", "FILE_UPLOAD", "SIGNATURE", "RADIO", "EMAIL",
}
DOB_FORMATS = ("%Y/%m/%d", "%m/%d/%Y", "%Y-%m-%d", "%m-%d-%Y", "%Y.%m.%d", "%m.%d.%Y", "%Y_%m_%d", "%m_%d_%Y")
DUPLICATE_OPPORTUNITY = "Can not create duplicate opportunity for the contact."


class ApiError(Exception):
    def __init__(self, status: int, message: str | list[str]) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def field_key_for(name: str, model: str = "contact") -> str:
    """GHL derives fieldKey from the name: lower-case, non-alphanumerics → '_'."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return f"{model}.{slug}"


def normalize_phone(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return raw
    try:
        num = phonenumbers.parse(raw, "US")
        if phonenumbers.is_possible_number(num):
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    return raw


def normalize_tags(tags: list[str]) -> list[str]:
    # GHL stores tags lower-cased and trimmed, without duplicates.
    out: list[str] = []
    for t in tags:
        t = t.strip().lower()
        if t and t not in out:
            out.append(t)
    return out


def parse_dob(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        for fmt in DOB_FORMATS:
            try:
                return datetime.strptime(value[:10], fmt).date().isoformat()
            except ValueError:
                continue
    raise ApiError(422, ["dateOfBirth must be a valid date (YYYY-MM-DD, MM/DD/YYYY, ...)"])


class Store:
    """All locations' data. Methods enforce GHL's rules and return response-shaped dicts."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.reset()

    # ---------------------------------------------------------------- setup
    def reset(self) -> None:
        self.ids = IdGenerator(self.config.seed)
        self.locations: dict[str, LocationConfig] = {loc.id: loc for loc in self.config.locations}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        self.opportunities: dict[str, dict[str, Any]] = {}
        self.custom_fields: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.workflows: dict[str, dict[str, Any]] = {}
        self.enrollments: list[dict[str, Any]] = []
        self.request_counts: Counter[tuple[str, str]] = Counter()
        self.status_counts: Counter[tuple[str, int]] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self.ignored_custom_fields: Counter[str] = Counter()
        seed = self.config.seed
        created = iso(datetime(2024, 1, 1, tzinfo=timezone.utc))
        for loc in self.config.locations:
            for folder in loc.folders:
                fid = stable_id(f"{seed}:{loc.id}:folder:{folder}")
                self.folders[fid] = {"id": fid, "name": folder, "locationId": loc.id, "documentType": "folder"}
            for p in loc.pipelines:
                pid = p.id or stable_id(f"{seed}:{loc.id}:pipeline:{p.name}")
                stages = [
                    {
                        "id": s.id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:{pid}:stage:{s.name}")),
                        "name": s.name, "position": i, "showInFunnel": True, "showInPieChart": True,
                    }
                    for i, s in enumerate(p.stages)
                ]
                self.pipelines[pid] = {
                    "id": pid, "name": p.name, "stages": stages, "showInFunnel": True, "showInPieChart": True,
                    "locationId": loc.id,
                }
            for w in loc.workflows:
                wid = w.id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:{loc.id}:workflow:{w.name}"))
                self.workflows[wid] = {
                    "id": wid, "name": w.name, "status": w.status, "version": 1, "createdAt": created,
                    "updatedAt": created, "locationId": loc.id,
                }
            for i, cf in enumerate(loc.custom_fields):
                folder_id = stable_id(f"{seed}:{loc.id}:folder:{cf.folder}") if cf.folder else None
                cid = cf.id or stable_id(f"{seed}:{loc.id}:customField:{cf.name}")
                self.custom_fields[cid] = self._field_record(
                    cid, loc.id, cf.name, cf.data_type, cf.model, i, cf.field_key, folder_id, placeholder=""
                )

    def _field_record(
        self, cid: str, location_id: str, name: str, data_type: str, model: str, position: int,
        field_key: str | None, parent_id: str | None, placeholder: str,
    ) -> dict[str, Any]:
        rec = {
            "id": cid, "name": name, "fieldKey": field_key or field_key_for(name, model), "placeholder": placeholder,
            "dataType": data_type, "position": position, "picklistOptions": [], "picklistImageOptions": [],
            "isAllowedCustomOption": False, "isMultiFileAllowed": False, "maxFileLimit": 0,
            "locationId": location_id, "model": model,
        }
        if parent_id:
            rec["parentId"] = parent_id
        return rec

    def _now(self) -> str:
        return iso(self.clock())

    # ---------------------------------------------------------------- access checks
    def check_location(self, token_location: str, location_id: str | None) -> None:
        if not location_id:
            raise ApiError(422, ["locationId should not be empty"])
        if location_id != token_location:
            raise ApiError(403, "The token does not have access to this location.")

    def contact(self, token_location: str, contact_id: str) -> dict[str, Any]:
        c = self.contacts.get(contact_id)
        if c is None:
            raise ApiError(400, "Contact not found")
        if c["locationId"] != token_location:
            raise ApiError(403, "The token does not have access to this location.")
        return c

    def opportunity(self, token_location: str, opp_id: str) -> dict[str, Any]:
        o = self.opportunities.get(opp_id)
        if o is None:
            raise ApiError(400, "Opportunity not found")
        if o["locationId"] != token_location:
            raise ApiError(403, "The token does not have access to this location.")
        return o

    # ---------------------------------------------------------------- contacts
    @staticmethod
    def _matcher(field: str, value: str) -> Callable[[dict[str, Any]], bool]:
        """How GoHighLevel compares a contact's email (case-insensitive) or phone (E.164) with a given value:
        the same test for upsert's duplicate matching, the duplicate search and POST /contacts/search."""
        if field == "email":
            want = value.lower()
            return lambda c: (c.get("email") or "").lower() == want
        norm = normalize_phone(value)
        return lambda c: c.get("phone") == norm

    def _matching(self, location_id: str, field: str, value: str) -> list[dict[str, Any]]:
        """The location's contacts whose `field` matches, oldest first (the one upsert resolves to comes first)."""
        test = self._matcher(field, value)
        return [c for c in self.contacts.values() if c["locationId"] == location_id and test(c)]

    def _find(self, location_id: str, email: str | None, phone: str | None) -> tuple[dict | None, dict | None]:
        by_email = next(iter(self._matching(location_id, "email", email)), None) if email else None
        by_phone = next(iter(self._matching(location_id, "phone", phone)), None) if phone else None
        return by_email, by_phone

    def _resolve_custom_field(self, location_id: str, entry: dict[str, Any]) -> str | None:
        cid, key = entry.get("id"), entry.get("key")
        if cid and cid in self.custom_fields and self.custom_fields[cid]["locationId"] == location_id:
            return cid
        if key:
            for f in self.custom_fields.values():
                if (
                    f["locationId"] == location_id
                    and f["model"] == "contact"
                    and f["fieldKey"] in (key, f"contact.{key}")
                ):
                    return f["id"]
        return None

    def _apply_contact(self, c: dict[str, Any], body: dict[str, Any], *, drop_phone: bool = False) -> None:
        for k in CONTACT_FIELDS:
            if k in body and not (drop_phone and k == "phone"):
                value = body[k]
                if k in ("dndSettings", "inboundDndSettings") and isinstance(value, dict):
                    # Per channel: a write names the channels it changes; the others keep their setting.
                    value = {**(c.get(k) or {}), **{ch: dict(v) for ch, v in value.items()}}
                if k == "phone":
                    value = normalize_phone(value)
                if k == "email" and isinstance(value, str):
                    value = value.strip()
                c[k] = value
        if "firstName" in body or "lastName" in body:
            if "name" not in body:
                c["name"] = " ".join(p for p in (c.get("firstName"), c.get("lastName")) if p) or None
        if "dateOfBirth" in body:
            c["dateOfBirth"] = parse_dob(body["dateOfBirth"])
        if "tags" in body and body["tags"] is not None:
            c["tags"] = normalize_tags(body["tags"])  # upsert/update tags replace all tags
        for entry in body.get("customFields") or []:
            cid = self._resolve_custom_field(c["locationId"], entry)
            if cid is None:
                self.ignored_custom_fields[c["locationId"]] += 1  # GHL ignores unknown field ids silently
                continue
            value = next((entry[k] for k in ("field_value", "fieldValue", "value") if k in entry), None)
            c["customFields"][cid] = value
        c["dateUpdated"] = self._now()

    def _new_contact(self, location_id: str) -> dict[str, Any]:
        now = self._now()
        cid = self.ids.new("contact")
        c: dict[str, Any] = {
            "id": cid, "locationId": location_id, "tags": [], "customFields": {}, "dateAdded": now,
            "dateUpdated": now, "type": "lead", "source": None,
        }
        self.contacts[cid] = c
        return c

    def upsert_contact(self, token_location: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        location_id = body.get("locationId")
        self.check_location(token_location, location_id)
        email, phone = body.get("email"), body.get("phone")
        # UpsertContactDto.createNewIfDuplicateAllowed: with the location's "Allow Duplicate Contact" on, a new
        # contact at once, without searching; otherwise ignored (the normal upsert below).
        if body.get("createNewIfDuplicateAllowed") and self.config.allows_duplicates(location_id):
            c = self._new_contact(location_id)
            self._apply_contact(c, body)
            return self.contact_view(c), True
        by_email, by_phone = self._find(location_id, email, phone)
        target = self._first_match(by_email, by_phone)
        split = by_email is not None and by_phone is not None and by_email["id"] != by_phone["id"]
        if target is None:
            c = self._new_contact(location_id)
            self._apply_contact(c, body)
            return self.contact_view(c), True
        self._apply_contact(target, body, drop_phone=split and self.config.upsert_drops_phone_on_split_match)
        return self.contact_view(target), False

    def create_contact(self, token_location: str, body: dict[str, Any]) -> dict[str, Any]:
        location_id = body.get("locationId")
        self.check_location(token_location, location_id)
        by_email, by_phone = self._find(location_id, body.get("email"), body.get("phone"))
        if (by_email or by_phone) and not self.config.allows_duplicates(location_id):
            raise ApiError(400, "This location does not allow duplicated contacts.")
        c = self._new_contact(location_id)
        self._apply_contact(c, body)
        return self.contact_view(c)

    def update_contact(self, token_location: str, contact_id: str, body: dict[str, Any]) -> dict[str, Any]:
        c = self.contact(token_location, contact_id)
        self._apply_contact(c, body)
        return self.contact_view(c)

    def duplicate(self, token_location: str, location_id: str | None, email: str | None,
                  number: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """GET /contacts/search/duplicate: the contact an upsert with this email/phone would update, and the
        field that matched (the location's search sequence, `contact_match_order`). apro-sync no longer calls it
        (it puts email and phone in the URL); it uses POST /contacts/search instead."""
        self.check_location(token_location, location_id)
        by_email, by_phone = self._find(location_id, email, number)
        found = self._first_match(by_email, by_phone)
        if found is None:
            return None, None
        return self.contact_view(found), ("email" if found is by_email else "phone")

    def search_contacts(self, token_location: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /contacts/search (the documented SearchBodyV2DTO; see emulator/spec.py): `filters` combined
        with AND, groups with AND/OR; operator `eq` on `email` (case-insensitive) and `phone` (E.164), compared as
        upsert matches. Hits oldest first, so the first hit of a field is the contact upsert would resolve to by
        it. Answers `{contacts, total}`. `page`/`pageLimit` paginate; `query`, `sort` and `searchAfter` are not
        emulated (422, rather than an answer the real API would not give)."""
        location_id = body.get("locationId")
        self.check_location(token_location, location_id)
        for key in ("query", "sort", "searchAfter"):
            if body.get(key) not in (None, "", []):
                raise ApiError(422, [f"{key} is not supported by the emulator"])
        limit, page = body["pageLimit"], body.get("page", 1)
        if limit != int(limit) or not 1 <= limit <= 500:
            raise ApiError(422, ["pageLimit must be an integer from 1 to 500"])
        if page != int(page) or page < 1:
            raise ApiError(422, ["page must be an integer not less than 1"])
        tests = [self._search_filter(f) for f in body.get("filters") or []]
        hits = [c for c in self.contacts.values() if c["locationId"] == location_id and all(t(c) for t in tests)]
        start = (int(page) - 1) * int(limit)
        return {"contacts": [self.contact_view(c) for c in hits[start:start + int(limit)]], "total": len(hits)}

    def _search_filter(self, f: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
        if "group" in f:
            parts = [self._search_filter(inner) for inner in f["filters"]]
            if f["group"] == "OR":
                return lambda c: any(p(c) for p in parts)
            return lambda c: all(p(c) for p in parts)
        field, operator = f["field"], f["operator"]
        if field not in ("email", "phone"):
            raise ApiError(422, [f"filter field {field} is not supported by the emulator"])
        if operator != "eq":
            raise ApiError(422, [f"filter operator {operator} is not supported by the emulator"])
        value = f.get("value")
        if not isinstance(value, str) or not value.strip():
            raise ApiError(422, [f"value of the {field} filter should not be empty"])
        return self._matcher(field, value.strip())

    def _first_match(self, by_email: dict | None, by_phone: dict | None) -> dict | None:
        """The contact an upsert resolves to: the first field of the location's search sequence that matches."""
        found = {"email": by_email, "phone": by_phone}
        return next((found[f] for f in self.config.contact_match_order if found[f] is not None), None)

    def location_view(self, token_location: str, location_id: str) -> dict[str, Any]:
        """GET /locations/{locationId} (GetLocationByIdSchema), with the duplicate-contact setting."""
        self.check_location(token_location, location_id)
        loc = self.locations[location_id]
        return {"id": loc.id, "name": loc.name, "settings": {
            "allowDuplicateContact": self.config.allows_duplicates(location_id), "allowDuplicateOpportunity": False,
            "allowFacebookNameMerge": False, "disableContactTimezone": False}}

    def contact_view(self, c: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in c.items() if k != "customFields" and v is not None}
        if c.get("email"):
            out["emailLowerCase"] = c["email"].lower()
        for src, dst in (
            ("firstName", "firstNameLowerCase"),
            ("lastName", "lastNameLowerCase"),
            ("name", "fullNameLowerCase"),
        ):
            if c.get(src):
                out[dst] = c[src].lower()
        out["customFields"] = [{"id": k, "value": v} for k, v in c["customFields"].items()]
        return out

    def add_tags(self, token_location: str, contact_id: str, tags: list[str]) -> list[str]:
        c = self.contact(token_location, contact_id)
        c["tags"] = normalize_tags([*c["tags"], *tags])
        c["dateUpdated"] = self._now()
        return list(c["tags"])

    def remove_tags(self, token_location: str, contact_id: str, tags: list[str]) -> list[str]:
        c = self.contact(token_location, contact_id)
        drop = set(normalize_tags(tags))
        c["tags"] = [t for t in c["tags"] if t not in drop]
        c["dateUpdated"] = self._now()
        return list(c["tags"])

    # ---------------------------------------------------------------- notes
    def create_note(self, token_location: str, contact_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.contact(token_location, contact_id)
        nid = self.ids.new("note")
        note = {"id": nid, "body": body["body"], "contactId": contact_id, "dateAdded": self._now(), "pinned": False}
        for k in ("userId", "title", "color", "pinned"):
            if k in body:
                note[k] = body[k]
        self.notes[nid] = note
        return dict(note)

    def list_notes(self, token_location: str, contact_id: str) -> list[dict[str, Any]]:
        self.contact(token_location, contact_id)
        return [dict(n) for n in self.notes.values() if n["contactId"] == contact_id]

    # ---------------------------------------------------------------- custom fields
    def list_custom_fields(self, token_location: str, location_id: str, model: str | None) -> list[dict[str, Any]]:
        self.check_location(token_location, location_id)
        return [
            dict(f) for f in self.custom_fields.values()
            if f["locationId"] == location_id and (model in (None, "", "all") or f["model"] == model)
        ]

    def get_custom_field(self, token_location: str, location_id: str, field_id: str) -> dict[str, Any]:
        self.check_location(token_location, location_id)
        f = self.custom_fields.get(field_id)
        if f is None or f["locationId"] != location_id:
            raise ApiError(400, "Custom field not found")
        return dict(f)

    def create_custom_field(self, token_location: str, location_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check_location(token_location, location_id)
        if body["dataType"] not in DATA_TYPES:
            raise ApiError(422, [f"dataType must be one of the following values: {', '.join(sorted(DATA_TYPES))}"])
        model = body.get("model", "contact")
        existing = [f for f in self.custom_fields.values() if f["locationId"] == location_id and f["model"] == model]
        if any(f["name"].strip().lower() == body["name"].strip().lower() for f in existing):
            raise ApiError(400, f"Custom field with name {body['name']} already exists")
        key = field_key_for(body["name"], model)
        keys = {f["fieldKey"] for f in existing}
        n = 1
        while key in keys:  # same slug from a different name: GHL suffixes the key
            key, n = f"{field_key_for(body['name'], model)}_{n}", n + 1
        cid = self.ids.new("customField")
        rec = self._field_record(
            cid, location_id, body["name"], body["dataType"], model, int(body.get("position", len(existing))),
            key, None, body.get("placeholder", ""),
        )
        self.custom_fields[cid] = rec
        return dict(rec)

    # ---------------------------------------------------------------- pipelines / opportunities
    def list_pipelines(self, token_location: str, location_id: str | None) -> list[dict[str, Any]]:
        self.check_location(token_location, location_id)
        return [p for p in self.pipelines.values() if p["locationId"] == location_id]

    def _stage_ok(self, pipeline_id: str, stage_id: str | None) -> str:
        stages = self.pipelines[pipeline_id]["stages"]
        if stage_id is None:
            return stages[0]["id"]
        if not any(s["id"] == stage_id for s in stages):
            raise ApiError(400, "Pipeline stage not found in the pipeline")
        return stage_id

    def _pipeline(self, location_id: str, pipeline_id: str) -> dict[str, Any]:
        p = self.pipelines.get(pipeline_id)
        if p is None or p["locationId"] != location_id:
            raise ApiError(400, "Pipeline not found")
        return p

    def create_opportunity(self, token_location: str, body: dict[str, Any]) -> dict[str, Any]:
        location_id = body["locationId"]
        self.check_location(token_location, location_id)
        self._pipeline(location_id, body["pipelineId"])
        self.contact(token_location, body["contactId"])
        stage = self._stage_ok(body["pipelineId"], body.get("pipelineStageId"))
        if any(
            o["contactId"] == body["contactId"] and o["pipelineId"] == body["pipelineId"]
            for o in self.opportunities.values()
        ):
            raise ApiError(400, DUPLICATE_OPPORTUNITY)
        now = self._now()
        oid = self.ids.new("opportunity")
        opp = {
            "id": oid, "name": body["name"], "monetaryValue": body.get("monetaryValue", 0),
            "pipelineId": body["pipelineId"], "pipelineStageId": stage, "status": body["status"], "source": "",
            "lastStatusChangeAt": now, "lastStageChangeAt": now, "lastActionDate": now, "indexVersion": "1",
            "createdAt": now, "updatedAt": now, "contactId": body["contactId"], "locationId": location_id,
            "customFields": [], "followers": [],
        }
        if body.get("assignedTo"):
            opp["assignedTo"] = body["assignedTo"]
        self.opportunities[oid] = opp
        return self.opportunity_view(opp)

    def update_opportunity(self, token_location: str, opp_id: str, body: dict[str, Any]) -> dict[str, Any]:
        opp = self.opportunity(token_location, opp_id)
        now = self._now()
        pipeline_id = body.get("pipelineId", opp["pipelineId"])
        if pipeline_id != opp["pipelineId"]:
            self._pipeline(opp["locationId"], pipeline_id)
            if any(
                o["contactId"] == opp["contactId"] and o["pipelineId"] == pipeline_id
                for o in self.opportunities.values()
            ):
                raise ApiError(400, DUPLICATE_OPPORTUNITY)
        stage = body.get("pipelineStageId")
        if stage is not None or pipeline_id != opp["pipelineId"]:
            stage = self._stage_ok(pipeline_id, stage)
            if stage != opp["pipelineStageId"]:
                opp["lastStageChangeAt"] = now
            opp["pipelineStageId"] = stage
        opp["pipelineId"] = pipeline_id
        if "status" in body and body["status"] != opp["status"]:
            opp["status"], opp["lastStatusChangeAt"] = body["status"], now
        for k in ("name", "monetaryValue", "assignedTo"):
            if k in body:
                opp[k] = body[k]
        opp["updatedAt"] = opp["lastActionDate"] = now
        return self.opportunity_view(opp)

    def update_opportunity_status(self, token_location: str, opp_id: str, body: dict[str, Any]) -> None:
        opp = self.opportunity(token_location, opp_id)
        now = self._now()
        if body["status"] != opp["status"]:
            opp["status"], opp["lastStatusChangeAt"] = body["status"], now
        if "lostReasonId" in body:
            opp["lostReasonId"] = body["lostReasonId"]
        opp["updatedAt"] = now

    def opportunity_view(self, opp: dict[str, Any]) -> dict[str, Any]:
        out = dict(opp)
        c = self.contacts.get(opp["contactId"])
        if c:
            out["contact"] = {
                k: c[k] for k in ("id", "name", "companyName", "email", "phone", "tags") if c.get(k) is not None
            }
        return out

    def search_opportunities(self, token_location: str, q: dict[str, str]) -> dict[str, Any]:
        location_id = q.get("location_id") or q.get("locationId")
        self.check_location(token_location, location_id)
        filters = {
            "contactId": q.get("contact_id") or q.get("contactId"),
            "pipelineId": q.get("pipeline_id") or q.get("pipelineId"),
            "pipelineStageId": q.get("pipeline_stage_id") or q.get("pipelineStageId"),
            "assignedTo": q.get("assigned_to") or q.get("assignedTo"),
            "id": q.get("id"),
        }
        status = q.get("status")
        if status and status not in ("open", "won", "lost", "abandoned", "all"):
            raise ApiError(422, ["status must be one of the following values: open, won, lost, abandoned, all"])
        text = (q.get("q") or "").lower()
        hits = [
            o for o in self.opportunities.values()
            if o["locationId"] == location_id
            and all(v in (None, "") or o.get(k) == v for k, v in filters.items())
            and (not status or status == "all" or o["status"] == status)
            and (not text or text in o["name"].lower())
        ]
        hits.sort(key=lambda o: (o["createdAt"], o["id"]))
        try:
            limit = min(max(int(q.get("limit") or 20), 1), 100)
            page = max(int(q.get("page") or 1), 1)
        except ValueError as exc:
            raise ApiError(422, ["limit and page must be numbers"]) from exc
        chunk = hits[(page - 1) * limit: page * limit]
        meta: dict[str, Any] = {"total": len(hits), "currentPage": page, "prevPage": page - 1 if page > 1 else None}
        if page * limit < len(hits):
            meta["nextPage"] = page + 1
        if chunk:
            meta["startAfterId"] = chunk[-1]["id"]
        meta = {k: v for k, v in meta.items() if v is not None}
        return {"opportunities": [self.opportunity_view(o) for o in chunk], "meta": meta, "aggregations": {}}

    # ---------------------------------------------------------------- workflows
    def list_workflows(self, token_location: str, location_id: str | None) -> list[dict[str, Any]]:
        self.check_location(token_location, location_id)
        return [dict(w) for w in self.workflows.values() if w["locationId"] == location_id]

    def enroll(self, token_location: str, contact_id: str, workflow_id: str, body: dict[str, Any]) -> None:
        c = self.contact(token_location, contact_id)
        w = self.workflows.get(workflow_id)
        if w is None or w["locationId"] != c["locationId"]:
            raise ApiError(400, "Workflow not found")
        # Real GHL enrolls again on every call (no idempotency): the sync engine must avoid doubles.
        self.enrollments.append({
            "contactId": contact_id, "workflowId": workflow_id, "workflowName": w["name"],
            "locationId": c["locationId"], "eventStartTime": body.get("eventStartTime"), "enrolledAt": self._now(),
        })

    def unenroll(self, token_location: str, contact_id: str, workflow_id: str) -> None:
        self.contact(token_location, contact_id)
        for e in self.enrollments:
            if e["contactId"] == contact_id and e["workflowId"] == workflow_id:
                e["removedAt"] = self._now()

    # ---------------------------------------------------------------- inspection
    def state(self) -> dict[str, Any]:
        keys = {f["id"]: f["fieldKey"] for f in self.custom_fields.values()}
        contacts = []
        for c in self.contacts.values():
            view = self.contact_view(c)
            view["customFieldsByKey"] = {keys.get(k, k): v for k, v in c["customFields"].items()}
            view["notes"] = [n for n in self.notes.values() if n["contactId"] == c["id"]]
            view["enrollments"] = [e for e in self.enrollments if e["contactId"] == c["id"]]
            contacts.append(view)
        enroll_counts = Counter((e["contactId"], e["workflowName"]) for e in self.enrollments)
        return {
            "contacts": contacts,
            "notes": list(self.notes.values()),
            "opportunities": [self.opportunity_view(o) for o in self.opportunities.values()],
            "customFields": list(self.custom_fields.values()),
            "folders": list(self.folders.values()),
            "pipelines": list(self.pipelines.values()),
            "workflows": list(self.workflows.values()),
            "enrollments": self.enrollments,
            "enrollmentCounts": [
                {"contactId": c, "workflowName": w, "count": n} for (c, w), n in sorted(enroll_counts.items())
            ],
            "requestCounts": [
                {"locationId": loc, "endpoint": ep, "count": n} for (loc, ep), n in sorted(self.request_counts.items())
            ],
            "statusCounts": [
                {"endpoint": ep, "status": s, "count": n} for (ep, s), n in sorted(self.status_counts.items())
            ],
            "rateLimited": dict(sorted(self.rate_limited.items())),
            "faultsInjected": dict(sorted(self.faults_injected.items())),
            "ignoredCustomFields": dict(sorted(self.ignored_custom_fields.items())),
        }

    def snapshot(self) -> dict[str, Any]:
        """End state without generated ids/timestamps: contacts by natural key, fields by fieldKey, names for refs."""
        keys = {f["id"]: f["fieldKey"] for f in self.custom_fields.values()}
        stage_names = {s["id"]: s["name"] for p in self.pipelines.values() for s in p["stages"]}

        def ckey(contact_id: str) -> str:
            c = self.contacts.get(contact_id, {})
            return f"{(c.get('email') or '').lower()}|{c.get('phone') or ''}"

        contacts = []
        for c in self.contacts.values():
            contacts.append(
                {
                    "locationId": c["locationId"],
                    "key": ckey(c["id"]),
                    **{k: c.get(k) for k in (*CONTACT_FIELDS, "dateOfBirth") if c.get(k) is not None},
                    "tags": sorted(c["tags"]),
                    "customFields": {
                        keys.get(k, k): v
                        for k, v in sorted(c["customFields"].items(), key=lambda kv: keys.get(kv[0], kv[0]))
                    },
                    "notes": sorted(n["body"] for n in self.notes.values() if n["contactId"] == c["id"]),
                }
            )
        opps = sorted(
            (
                {
                    "contact": ckey(o["contactId"]), "pipeline": self.pipelines[o["pipelineId"]]["name"],
                    "stage": stage_names.get(o["pipelineStageId"]), "status": o["status"], "name": o["name"],
                    "monetaryValue": o.get("monetaryValue"),
                }
                for o in self.opportunities.values()
            ),
            key=lambda o: (o["contact"], o["pipeline"]),
        )
        enroll = Counter((ckey(e["contactId"]), e["workflowName"]) for e in self.enrollments)
        fields = sorted(
            ({"locationId": f["locationId"], "fieldKey": f["fieldKey"], "name": f["name"], "dataType": f["dataType"]}
             for f in self.custom_fields.values()),
            key=lambda f: (f["locationId"], f["fieldKey"]),
        )
        return {
            "contacts": sorted(contacts, key=lambda c: (c["locationId"], c["key"])),
            "opportunities": opps,
            "enrollments": [{"contact": c, "workflow": w, "count": n} for (c, w), n in sorted(enroll.items())],
            "customFields": fields,
        }
