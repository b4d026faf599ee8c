"""Normalized models built without pydantic validation, from values the normalizer has already checked.

Validating a model costs microseconds and the normalizer builds several per event. Fields are stored in their
declared order, as validation stores them (serialization walks `__dict__`), so the JSON is byte-identical;
tests/streams/normalize/test_trusted.py re-validates the result of every differential case and compares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from foundations.formats.normalized import (
    Address, Appointment, Client, Invoice, LineItem, Membership, NormalizedEvent, Skipped, Unreadable,
)

ModelT = TypeVar("ModelT", bound=BaseModel)


def builder(model: type[ModelT]) -> Callable[..., ModelT]:
    """`model(**fields)` for fields that already have their declared type (a str for `str`, a tuple for a tuple,
    an aware datetime for `AwareDatetime`, a model instance for a sub-model), as a plain function with keyword
    parameters: a missing or unknown field is a TypeError, as with the constructor. `model_fields_set` is every
    field (as after `model_validate(model_dump())`); nothing here reads it."""
    fields = model.model_fields
    names = list(fields)
    if not all(name.isidentifier() and not name.startswith("_") for name in names):
        raise TypeError(f"{model.__name__}: field names unsuitable for a generated constructor")
    scope: dict[str, Any] = {"_model": model, "_new": model.__new__, "_set": object.__setattr__,
                             "_names": frozenset(names)}
    params = []
    for name, info in fields.items():
        if info.is_required():
            params.append(name)
        elif info.default_factory is not None:  # one shared default object would leak between events
            raise TypeError(f"{model.__name__}.{name}: a default_factory needs validation, not a generated constructor")
        else:
            scope[f"_default_{name}"] = info.get_default()
            params.append(f"{name}=_default_{name}")
    entries = ", ".join(f"{name!r}: {name}" for name in names)
    source = (
        f"def new_{model.__name__}(*, {', '.join(params)}):\n"
        "    obj = _new(_model)\n"
        f"    _set(obj, '__dict__', {{{entries}}})\n"
        "    _set(obj, '__pydantic_fields_set__', set(_names))\n"
        "    _set(obj, '__pydantic_extra__', None)\n"
        "    _set(obj, '__pydantic_private__', None)\n"
        "    return obj\n"
    )
    exec(source, scope)  # noqa: S102 - our own field names (checked above), as dataclasses generates __init__
    made: Callable[..., ModelT] = scope[f"new_{model.__name__}"]
    return made


new_address = builder(Address)
new_appointment = builder(Appointment)
new_client = builder(Client)
new_invoice = builder(Invoice)
new_line_item = builder(LineItem)
new_membership = builder(Membership)
new_event = builder(NormalizedEvent)
new_skipped = builder(Skipped)
new_unreadable = builder(Unreadable)
