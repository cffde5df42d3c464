"""Base class of every compress config model."""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)


def _numeric_not_bool(annotation: Any) -> bool:
    """Whether a field takes numbers but not booleans (``int``, ``float``, ``int | None``...)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_not_bool(typing.get_args(annotation)[0])
    args = typing.get_args(annotation) if origin in (Union, types.UnionType) else (annotation,)
    return bool(args) and bool not in args and any(a in (int, float) for a in args)


class CompressConfig(BaseModel):
    """Strict, immutable config: unknown keys are errors, values never change after validation.

    Numeric fields refuse booleans: pydantic would read YAML ``true`` as ``1``, which hides a
    value written in the wrong place.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    added_later: ClassVar[tuple[str, ...]] = ()
    """Optional keys added after configs of this class were first written: left out of dumps while
    ``None``, so configs that do not use them dump as before and keep the runner's stage cache keys."""

    @model_serializer(mode="wrap")
    def _omit_unset_added_keys(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        out = handler(self)
        for name in type(self).added_later:
            if getattr(self, name) is None:
                out.pop(name, None)
        return out

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _numeric_not_bool(field.annotation):
                raise ValueError(f"a number, not the boolean {str(v).lower()}; write a number such as 1")
        return v
