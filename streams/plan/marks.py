"""Done marks: what the executor finished since a client's state was last written, as a small record (pure).

The sink writes the whole state when it plans and when an event ends; each op in between writes only its done mark
(the op id and any new CRM ids) under the client's marks key. `merge(state, marks)` gives the state `mark_done`
would have written; every op id in a marks record is done, so merging a stale record again changes nothing.
Layout and durability order: docs/sync-engine.md, "Done marks"."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foundations.formats.crm_commands import CrmOp
from streams.plan.state import ClientState, CrmIds, mark_done

SEPARATOR = "\x1f"  # client ids never hold control characters (foundations/formats/raw.py): no state key clashes
SUFFIX = SEPARATOR + "done"
PREFIX = "d1:"  # the marks format's version
MAX_MARKS_BYTES = 64 * 1024  # a client owes at most a few events' ops; a corrupt value stops here


class MarksDecodeError(ValueError):
    """A marks value that is no done-marks record (the message names the problem, never the content)."""


class DoneMarks(BaseModel):
    """Ops done since the state was written: event id → op id suffixes (after `<event id>:`), new CRM ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    done: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    crm: dict[str, CrmIds] = Field(default_factory=dict)  # GHL location label → ids, absolute (as recorded last)

    def op_ids(self) -> list[str]:
        return [f"{event_id}:{suffix}" for event_id, suffixes in self.done.items() for suffix in suffixes]

    def __bool__(self) -> bool:
        return bool(self.done or self.crm)


EMPTY = DoneMarks()


def marks_key(client_id: str) -> str:
    """The table key of a client's done marks: same partition as its state (the sink writes both to the
    partition of the event being processed). A client id holding the separator (never normalized) is refused."""
    if SEPARATOR in client_id:
        raise ValueError("client id holds a control character")
    return client_id + SUFFIX


def is_marks_key(key: str) -> bool:
    return key.endswith(SUFFIX)


def client_of(key: str) -> str:
    return key[: -len(SUFFIX)]


def add(marks: DoneMarks, op: CrmOp, before: ClientState, after: ClientState) -> DoneMarks:
    """`marks` plus `op` done, and the CRM ids the executor recorded (`before` → `after`)."""
    head = f"{op.event_id}:"
    if not op.op_id.startswith(head):
        raise ValueError("op id does not start with its event id")
    suffix = op.op_id[len(head):]
    done = dict(marks.done)
    if suffix not in done.get(op.event_id, ()):
        done[op.event_id] = (*done.get(op.event_id, ()), suffix)
    crm = dict(marks.crm)
    crm.update({label: ids for label, ids in after.crm.items() if before.crm.get(label) != ids})
    return DoneMarks(done=done, crm=crm)


def merge(state: ClientState, marks: DoneMarks) -> ClientState:
    """The state with `marks` applied: each op marked done (ids no longer pending are ignored), CRM ids set."""
    for op_id in marks.op_ids():
        state = mark_done(state, op_id)
    if marks.crm:
        state = state.model_copy(update={"crm": {**state.crm, **marks.crm}})
    return state


def encode(marks: DoneMarks) -> str:
    return PREFIX + marks.model_dump_json(exclude_defaults=True)


def decode(value: str | bytes) -> DoneMarks:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not value.startswith(PREFIX):
        raise MarksDecodeError("done marks value in an unknown encoding")
    if len(value) > MAX_MARKS_BYTES:
        raise MarksDecodeError(f"done marks value larger than {MAX_MARKS_BYTES} bytes")
    try:
        return DoneMarks.model_validate_json(value[len(PREFIX):])
    except ValidationError:
        raise MarksDecodeError("done marks value is corrupt") from None


__all__ = ["EMPTY", "DoneMarks", "MarksDecodeError", "add", "client_of", "decode", "encode", "is_marks_key",
           "marks_key", "merge"]
