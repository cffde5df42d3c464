"""CompressConfig: keys added later leave the dumps of configs that do not use them unchanged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compress.config.base import CompressConfig


class Old(CompressConfig):
    a: int = 1


class New(CompressConfig):
    added_later = ("b",)

    a: int = 1
    b: int | None = None


def test_an_unset_added_key_is_left_out_of_every_dump() -> None:
    assert New().model_dump() == Old().model_dump() == {"a": 1}
    assert New().model_dump(mode="json") == {"a": 1}
    assert New().model_dump_json() == Old().model_dump_json()


def test_a_set_added_key_is_dumped_and_the_other_keys_keep_their_rules() -> None:
    assert New(b=0).model_dump() == {"a": 1, "b": 0}  # 0 is set: only None is left out
    assert New(b=2).model_dump(exclude={"a"}) == {"b": 2}
    with pytest.raises(ValidationError, match="extra"):
        New.model_validate({"c": 1})  # still strict


def test_added_later_is_not_a_field() -> None:
    assert "added_later" not in New.model_fields
