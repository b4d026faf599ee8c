"""`trusted.build` gives what pydantic validation gives: every differential case's result, re-validated from its
own fields, is equal, has the same repr (same leaf types) and serializes to the same bytes."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from foundations.formats.normalized import Client, LineItem
from streams.normalize.rules import normalize
from streams.normalize.trusted import new_client, new_line_item
from tests.streams.normalize.test_differential import CASES


def _revalidated(model: object) -> object:
    return type(model).model_validate(model.model_dump(round_trip=True))  # type: ignore[attr-defined]


@pytest.mark.parametrize("chunk", range(4))
def test_every_case_equals_its_validated_copy(chunk: int) -> None:
    checked = 0
    for number, case in enumerate(CASES):
        if number % 4 != chunk:
            continue
        result = normalize(base64.b64decode(case["raw"]), case["headers"], **case["kwargs"])
        again = _revalidated(result)
        assert again == result, number
        assert repr(again) == repr(result), number
        assert again.model_dump_json() == result.model_dump_json(), number  # type: ignore[attr-defined]
        checked += 1
    assert checked > 500


def test_builder_matches_the_constructor_and_refuses_bad_fields() -> None:
    item = new_line_item(name="Botox")
    assert item == LineItem(name="Botox") and repr(item) == repr(LineItem(name="Botox"))
    assert list(item.__dict__) == list(LineItem.model_fields)
    assert item.model_dump_json() == LineItem(name="Botox").model_dump_json()
    client = new_client(id="7", email="a@example.com")
    assert client.model_dump_json() == Client(id="7", email="a@example.com").model_dump_json()
    with pytest.raises(TypeError):
        new_client(first_name="Jane")  # id is required
    with pytest.raises(TypeError):
        new_line_item(name="Botox", colour="red")
    with pytest.raises(ValidationError):
        item.name = "Filler"  # type: ignore[misc]  # still frozen
    assert hash(item) == hash(LineItem(name="Botox"))
    copied = item.model_copy(update={"name": "Filler"})
    assert copied == LineItem(name="Filler")


def test_a_model_with_a_default_factory_is_refused() -> None:
    from pydantic import BaseModel, Field

    from streams.normalize.trusted import builder

    class WithList(BaseModel):
        items: list[int] = Field(default_factory=list)

    with pytest.raises(TypeError, match="default_factory"):
        builder(WithList)
