"""Tolerant reading of AestheticsPro webhook bodies, shared by the producer (for the Kafka key) and the normalizer.

AestheticsPro's payloads vary (examples/webhooks/README.md): key spellings (camelCase, snake_case, PascalCase,
UPPERCASE), envelopes (`data` / `payload`), JSON or form bodies, ids as numbers or strings. Everything here is
pure and never logs: bodies are PHI.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable, Mapping
from decimal import Decimal
from itertools import accumulate
from typing import Any
from urllib.parse import parse_qsl

import msgspec

_SEPARATORS = re.compile(r"[\s_\-.]+")
_INTEGRAL_TEXT = re.compile(r"\d+\.0+")
ENVELOPE_KEYS = ("data", "payload", "body", "record")
ENTITY_KEYS = ("client", "appointment", "invoice")
CLIENT_ID_KEYS = ("clientId", "client_id", "clientNumber", "customerId", "patientId", "guestId")
CLIENT_BLOCK_KEYS = ("client", "customer", "patient", "guest")
# Deepest nesting of objects/arrays a body may have. Real webhooks nest 3-4 levels; C parsers (orjson, and the
# stdlib's json at its recursion limit) must never see more: `check_nesting` enforces it on the raw bytes.
MAX_DEPTH = 64
MAX_ID_LENGTH = 128
# C0 and C1 control characters (Unicode category Cc). Ids containing one are refused; free text loses them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"[\t\n\r\x0b\x0c\x85]+")


class PayloadError(ValueError):
    """A body that is not a readable webhook. The message is safe to log (it never quotes the body)."""


_NORM_CACHE: dict[str, str] = {}
_NORM_CACHE_MAX = 4096  # distinct key spellings are few; the bound only matters against hostile bodies


def norm_key(key: object) -> str:
    """`clientId`, `client_id`, `CLIENTID`, `Client-Id` → `clientid`."""
    # Memoised: the same few dozen spellings come back on every webhook, and the regex costs ~1 µs a call.
    if type(key) is str:
        normed = _NORM_CACHE.get(key)
        if normed is None:
            normed = _SEPARATORS.sub("", key).lower()
            if len(key) <= 64:
                if len(_NORM_CACHE) >= _NORM_CACHE_MAX:
                    _NORM_CACHE.clear()
                _NORM_CACHE[key] = normed
        return normed
    return _SEPARATORS.sub("", str(key)).lower()


def _index(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised key → value; the first key (in the object's order) that normalises to a name wins."""
    cache = _NORM_CACHE
    if type(obj) is dict:  # built back to front, so the first spelling is the one left standing
        return {cache.get(key) or norm_key(key): value for key, value in reversed(obj.items())}
    index: dict[str, Any] = {}
    for key, value in obj.items():
        normed = cache.get(key) if type(key) is str else None  # inlined norm_key hit: this loop is the hot one
        if normed is None:
            normed = norm_key(key)
        if normed not in index:
            index[normed] = value
    return index


_SPELLED: dict[tuple[str, ...], tuple[str, ...]] = {}
_SPELLED_MAX = 4096  # the names are our own constants; the bound is only a safeguard


def spelled(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` normalised, without repeats, in order of preference (memoised)."""
    found = _SPELLED.get(names)
    if found is None:
        found = tuple(dict.fromkeys(norm_key(n) for n in names))
        if len(_SPELLED) < _SPELLED_MAX:
            _SPELLED[names] = found
    return found


def _first(index: dict[str, Any], names: tuple[str, ...]) -> Any:
    """First non-empty value (not None, "", [] or {}) under the normalised `names`, in their order."""
    lookup = index.get
    for name in names:
        value = lookup(name)
        if value is not None and (value or not (value == "" or value == [] or value == {})):
            return value
    return None


def get(obj: Any, *names: str) -> Any:
    """First non-empty value under any of `names`, comparing keys case- and separator-insensitively."""
    if not is_object(obj):
        return None
    return _first(_index(obj), spelled(names))


def get_block(obj: Any, *names: str) -> Mapping[str, Any] | None:
    value = get(obj, *names)
    return value if is_object(value) else None


class Lookup:
    """`get` / `get_block` for one read of one body, building each object's normalised-key index only once.

    A read looks at the same few objects dozens of times. An entry keeps its object alive, so an id cannot be
    reused while the lookup exists; the objects must not change meanwhile. Drop the lookup after the read.
    """

    __slots__ = ("_indexes",)

    def __init__(self) -> None:
        self._indexes: dict[int, tuple[Any, dict[str, Any]]] = {}

    def index(self, obj: Any) -> dict[str, Any] | None:
        """`obj`'s normalised key → value (the first key in order wins); None when `obj` is not an object."""
        if not is_object(obj):
            return None
        entry = self._indexes.get(id(obj))
        if entry is None or entry[0] is not obj:
            entry = (obj, _index(obj))
            self._indexes[id(obj)] = entry
        return entry[1]

    def has_any(self, obj: Any, names: frozenset[str]) -> bool:
        """Whether `obj` has a key under any of the normalised `names` (empty values count)."""
        index = self.index(obj)
        return index is not None and not index.keys().isdisjoint(names)

    def find(self, obj: Any, names: tuple[str, ...]) -> Any:
        """`get(obj, *spellings)` with `names` = `spelled(spellings)`."""
        index = self.index(obj)
        return None if index is None else _first(index, names)

    def find_block(self, obj: Any, names: tuple[str, ...]) -> Mapping[str, Any] | None:
        value = self.find(obj, names)
        return value if is_object(value) else None

    def get(self, obj: Any, *names: str) -> Any:
        """`get` above, each object indexed once per read. One frame: this is the normalizer's hottest call."""
        entry = self._indexes.get(id(obj))
        if entry is None or entry[0] is not obj:
            if not is_object(obj):
                return None
            entry = (obj, _index(obj))
            self._indexes[id(obj)] = entry
        return _first(entry[1], _SPELLED.get(names) or spelled(names))

    def get_block(self, obj: Any, *names: str) -> Mapping[str, Any] | None:
        value = self.get(obj, *names)
        return value if is_object(value) else None


_SCALARS = frozenset({str, int, float, bool, Decimal, type(None)})


def is_object(value: Any) -> bool:
    """A JSON object: a dict (every parsed body's), or another Mapping. Scalars skip the slow ABC check."""
    return type(value) is dict or (type(value) not in _SCALARS and isinstance(value, Mapping))


_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*+"', re.DOTALL)  # possessive: no backtracking
_BRACKET_STEPS = bytes.maketrans(b"{[}]", b"\x01\x01\xff\xff")  # as signed bytes: +1, +1, -1, -1
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"{}[]")))


def check_nesting(raw: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise PayloadError when JSON text nests more than `max_depth` objects/arrays inside each other.

    A byte scan, run before any parser sees the body: strings are cut out (brackets inside them do not count),
    then the running sum of `{[` = +1 and `}]` = -1 is taken in C (`accumulate` over signed bytes). Bodies with
    at most `max_depth` opening brackets in all, i.e. nearly every real webhook, need only two `count`s.
    Unbalanced or otherwise broken JSON is left to the parser to refuse.
    """
    if raw.count(b"{") + raw.count(b"[") <= max_depth:
        return
    structure = _JSON_STRING.sub(b"", raw) if b'"' in raw else raw
    steps = structure.translate(_BRACKET_STEPS, _NOT_BRACKETS)
    if max(accumulate(array("b", steps)), default=0) > max_depth:
        raise PayloadError(f"body nests deeper than {max_depth} levels")


def clean_text(text: str) -> str:
    """Free text without control characters: line breaks and tabs become one space, the rest are dropped."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub("", _LINE_BREAKS.sub(" ", text))


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
    if is_object(value):
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return
    for child in children:
        # Recurse into containers only (a call per scalar leaf is most of the cost); a leaf is still a level.
        if type(child) in _SCALARS:
            if depth >= MAX_DEPTH:
                raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
        else:
            _check_depth(child, depth + 1)


def _parse_json(raw: bytes) -> Any:
    check_nesting(raw)
    try:
        # msgspec (C, exact Decimals) reads every valid body; anything it refuses (NaN, a lone surrogate, invalid
        # UTF-8, huge integers, broken JSON) is read again by the stdlib below, which decides and words the reason.
        return _FAST_DECODER.decode(raw[3:] if raw[:3] == b"\xef\xbb\xbf" else raw)
    except (msgspec.DecodeError, ArithmeticError):  # ArithmeticError: Decimal's range, from the float hook
        pass
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PayloadError("body is not valid UTF-8") from None
    try:
        # Exact decimals: a float would already have lost cents before we see them.
        if text.startswith("\ufeff"):  # what json.loads says of a second BOM
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)  # json.loads(text, parse_float=Decimal) without a new decoder per call
    except RecursionError:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels") from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond Decimal's range (found by atheris)
        raise PayloadError("body has a number out of range") from None
    except ValueError as exc:
        raise PayloadError(f"body is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    if _SURROGATE_ESCAPE.search(raw) and not _valid_unicode(value):
        # The stdlib parser keeps a lone `\ud800` as a lone surrogate, which no UTF-8 encoder (Kafka keys,
        # JSON output, metric labels) accepts further down: reject the body here, with a reason.
        raise PayloadError("body contains a lone UTF-16 surrogate escape (not valid Unicode)")
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_DECODER = json.JSONDecoder(parse_float=Decimal)
_FAST_DECODER = msgspec.json.Decoder(float_hook=Decimal)


def _valid_unicode(value: Any) -> bool:
    """True when every string (keys included) in the decoded JSON encodes as UTF-8 (surrogate pairs did combine)."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _set_bracketed(target: dict[str, Any], key: str, value: str) -> None:
    """`client[firstName]=Jane` → {"client": {"firstName": "Jane"}} (PHP/ColdFusion-style form fields)."""
    parts = re.findall(r"[^\[\]]+", key)
    if not parts:
        return
    if len(parts) > MAX_DEPTH:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node.setdefault(parts[-1], value)


def _parse_form(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("form body is not valid UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=2000)
    except ValueError:
        raise PayloadError("body is not valid form encoding") from None
    if not pairs:
        raise PayloadError("form body has no fields")
    form: dict[str, Any] = {}
    for key, value in pairs:
        _set_bracketed(form, key, value)
    # Some senders post the JSON document as one form field.
    for name in ENVELOPE_KEYS:
        inner = form.get(name)
        if isinstance(inner, str) and inner.lstrip().startswith("{"):
            decoded = _parse_json(inner.encode())
            if isinstance(decoded, dict):
                return {**{k: v for k, v in form.items() if k != name}, name: decoded}
    return form


def parse_body(raw: bytes, content_type: str | None = None) -> dict[str, Any]:
    """Raw webhook bytes → a JSON object. Raises PayloadError for anything that is neither JSON nor a form."""
    if not raw or not raw.strip():
        raise PayloadError("body is empty")
    ctype = (content_type or "").split(";")[0].strip().lower()
    checked = False  # a JSON body's depth was bounded by check_nesting before it was parsed
    if ctype == "application/x-www-form-urlencoded":
        body: Any = _parse_form(raw)
    elif ctype.endswith("json") or raw.lstrip()[:1] in (b"{", b"["):
        body = _parse_json(raw)
        checked = True
    else:
        body = _parse_form(raw) if b"=" in raw else None
        if body is None:
            raise PayloadError("body is neither JSON nor form-encoded")
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        raise PayloadError(f"body is a JSON {type(body).__name__}, not an object")
    if not checked:  # a form body may embed a JSON document one level down
        _check_depth(body)
    return body


def unwrap(body: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a `data`/`payload` envelope: inner fields win, envelope fields (event kind, ids) fill the gaps."""
    merged: dict[str, Any] = dict(body)
    for _ in range(3):  # envelopes may nest (payload.data)
        inner = None
        for key, value in merged.items():
            if norm_key(key) in ENVELOPE_KEYS and isinstance(value, Mapping):
                inner = key
                break
        if inner is None:
            return merged
        nested = merged.pop(inner)
        present = {norm_key(k) for k in nested}
        merged = {**{k: v for k, v in merged.items() if norm_key(k) not in present}, **nested}
    return merged


def id_str(value: Any) -> str | None:
    """Ids arrive as strings or numbers (`48213`, `"48213"`, `48213.0`): one canonical string.

    None when absent or not a usable id (`id_issue` says why): at most MAX_ID_LENGTH characters, no control
    characters, a finite number.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value) if -(10**MAX_ID_LENGTH) < value < 10**MAX_ID_LENGTH else None
        return text if text and len(text) <= MAX_ID_LENGTH else None
    if isinstance(value, (float, Decimal)):
        try:
            if isinstance(value, Decimal) and (not value.is_finite() or value.adjusted() >= MAX_ID_LENGTH):
                return None  # int() of 1E+999999 would build a million-digit number
            if value == int(value):
                return str(int(value))
        except (OverflowError, ValueError):
            return None
        text = str(value)
        return text if len(text) <= MAX_ID_LENGTH else None
    if isinstance(value, str):
        text = value.strip()
        # A printable text has no control character (they are all non-printable): most ids skip the regex.
        if not text or len(text) > MAX_ID_LENGTH or (not text.isprintable() and _CONTROL.search(text)):
            return None
        if "." in text and _INTEGRAL_TEXT.fullmatch(text):
            text = text.split(".")[0]
        return text
    return None


def id_issue(value: Any) -> str | None:
    """Why a present value is not an id, in words safe to log (never the value); None if absent or fine."""
    if value is None or value == "" or id_str(value) is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        return "not a string or number"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None  # blank is absent
        if len(text) > MAX_ID_LENGTH:
            return f"longer than {MAX_ID_LENGTH} characters"
        return "contains control characters"
    if isinstance(value, int) or (isinstance(value, Decimal) and value.is_finite()):
        return f"longer than {MAX_ID_LENGTH} characters"
    return "not a finite number"


def _names(*names: str) -> tuple[str, ...]:
    return spelled(names)


_N_CLIENT_BLOCK = _names(*CLIENT_BLOCK_KEYS)
_N_CLIENT_ID = _names(*CLIENT_ID_KEYS)
_N_ID_OR_CLIENT_ID = _names("id", *CLIENT_ID_KEYS)
_N_PARENTS = (("invoice", _names("invoice")), ("appointment", _names("appointment")))
_N_APPOINTMENT = _names("appointment")
_N_LOCATION_BLOCK = _names("location", "clinic", "site", "business")
_N_LOCATION_BLOCK_ID = _names("id", "locationId")
_N_LOCATION_BLOCK_NAME = _names("name", "locationName")
_N_LOCATION_ID = _names("locationId", "location_id", "clinicId", "siteId")
_N_LOCATION_NAME = _names("locationName", "clinicName", "siteName")
_N_LOCATION = _names("location")


def _nested_client_blocks(body: Mapping[str, Any], look: Lookup) -> Iterable[Mapping[str, Any]]:
    for _entity, names in _N_PARENTS:
        parent = look.find_block(body, names)
        if parent:
            nested = look.find_block(parent, _N_CLIENT_BLOCK)
            if nested:
                yield nested
            grand = look.find_block(parent, _N_APPOINTMENT)
            if grand:
                nested = look.find_block(grand, _N_CLIENT_BLOCK)
                if nested:
                    yield nested


def _client_id(flat: Mapping[str, Any], look: Lookup, issues: list[str] | None = None) -> str | None:
    """The first usable client id, in the places below in order. When none is usable but a value was present,
    the first such value's `id_issue` is appended to `issues` (if given)."""
    # The top-level client block first, without a generator: it is where almost every payload has the id.
    block = look.find_block(flat, _N_CLIENT_BLOCK)
    rejected: list[Any] = []
    if block:
        raw = look.find(block, _N_ID_OR_CLIENT_ID)
        found = id_str(raw)
        if found:
            return found
        rejected.append(raw)
    for block in _nested_client_blocks(flat, look):
        raw = look.find(block, _N_ID_OR_CLIENT_ID)
        found = id_str(raw)
        if found:
            return found
        rejected.append(raw)
    raw = look.find(flat, _N_CLIENT_ID)
    found = id_str(raw)
    if found:
        return found
    rejected.append(raw)
    for _entity, names in _N_PARENTS:
        raw = look.find(look.find_block(flat, names), _N_CLIENT_ID)
        found = id_str(raw)
        if found:
            return found
        rejected.append(raw)
    if issues is not None:
        for raw in rejected:
            issue = id_issue(raw)
            if issue:
                issues.append(issue)
                break
    return None


def _location(flat: Mapping[str, Any], look: Lookup) -> tuple[str | None, str | None]:
    block = look.find_block(flat, _N_LOCATION_BLOCK)
    loc_id = id_str(look.find(block, _N_LOCATION_BLOCK_ID)) if block else None
    name = look.find(block, _N_LOCATION_BLOCK_NAME) if block else None
    if loc_id is None:
        loc_id = id_str(look.find(flat, _N_LOCATION_ID))
    if name is None:
        raw_name = look.find(flat, _N_LOCATION_NAME)
        if raw_name is None and isinstance(look.find(flat, _N_LOCATION), str):
            raw_name = look.find(flat, _N_LOCATION)
        name = raw_name
    text = clean_text(str(name)).strip() if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    return loc_id, (text or None)


def find_client_id(body: Mapping[str, Any]) -> str | None:
    """The AestheticsPro client id wherever the payload puts it; None when there is none (e.g. a test ping)."""
    return _client_id(unwrap(body), Lookup())


def find_location(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(location id, location name) from a `location` block or flat `locationId` / `locationName` fields."""
    return _location(unwrap(body), Lookup())


def find_client_and_location(
    body: Mapping[str, Any], issues: list[str] | None = None
) -> tuple[str | None, str | None, str | None]:
    """`(find_client_id(body), *find_location(body))` in one pass: one unwrap, each object indexed once.

    With `issues`: when the client id is present but unusable, why (`id_issue`) is appended to it.
    """
    return client_and_location(unwrap(body), Lookup(), issues)


def client_and_location(
    flat: Mapping[str, Any], look: Lookup, issues: list[str] | None = None
) -> tuple[str | None, str | None, str | None]:
    """`find_client_and_location` of an already unwrapped body, through the caller's lookup."""
    return (_client_id(flat, look, issues), *_location(flat, look))
