"""``factory``: data returned by a Python function the user names, ``package.module:function``.

This runs the user's code: the module is imported with ``importlib`` and the function called with
``kwargs`` (JSON values from the YAML). Nothing in the YAML is evaluated as code, and a factory
runs only when a pipeline names it. The function returns a ``TaskData`` or an
``(inputs, labels)`` pair of tensors (inputs: one row per example; labels: class indices, the
number of classes is ``max + 1``). The module must be importable (installed, or on
``PYTHONPATH``).

Example (YAML)::

    data:
      source: factory
      factory: mypkg.datasets:make_task
      kwargs: {n: 1000}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from compress._utils.imports import FactoryImportError, import_callable
from compress.config.schema import DataConfig, JsonValue
from compress.data._common import short_error
from compress.data.base import DataEnv, DataSourceError, TaskData, register_source

_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class FactoryDataConfig(DataConfig):
    """Data from a Python function (runs the user's code)."""

    source: Literal["factory"] = Field(
        "factory", description="Registered data source (see `compress list sources`)."
    )
    factory: str = Field(
        description="'package.module:function' returning a TaskData or (inputs, labels) tensors."
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, description="Keyword arguments of the function."
    )

    @field_validator("factory")
    @classmethod
    def _reference(cls, v: str) -> str:
        if not _REF.match(v):
            raise ValueError(f"'{v}' is not 'package.module:function' (dotted names, one colon)")
        return v


def import_function(ref: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (no string is evaluated; ``compress._utils.imports``).

    Raises:
        DataSourceError: The module cannot be imported, or has no such callable.
    """
    try:
        return import_callable(ref)
    except FactoryImportError as e:
        raise DataSourceError(str(e), key="factory") from None


def check_factory(cfg: FactoryDataConfig, env: DataEnv) -> None:
    """The function can be imported (imports its module; does not call it)."""
    import_function(cfg.factory)


@register_source("factory", FactoryDataConfig, check=check_factory)
def load_factory(cfg: FactoryDataConfig, env: DataEnv) -> TaskData:
    """Data returned by a Python function `package.module:function(**kwargs)` (runs your code).

    Args:
        cfg: ``factory`` and ``kwargs``.
        env: Unused (the module is found on ``sys.path``).

    Returns:
        The function's ``TaskData``, or one built from its ``(inputs, labels)``.

    Raises:
        DataSourceError: Import failure, the function raising, or a result that is neither a
            ``TaskData`` nor a pair of tensors with one label per input row.
    """
    fn = import_function(cfg.factory)
    try:
        out = fn(**cfg.kwargs)
    except Exception as e:
        raise DataSourceError(
            f"factory '{cfg.factory}' raised {short_error(e)}; fix the function or data.kwargs",
            key="factory",
        ) from None
    if isinstance(out, TaskData):
        return out
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        shown = type(out).__name__ if not isinstance(out, tuple) else f"a tuple of {len(out)}"
        raise DataSourceError(
            f"factory '{cfg.factory}' returned {shown}; expected a TaskData or (inputs, labels) tensors",
            key="factory",
        )
    inputs, labels = out
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1 or len(labels) == 0:
        raise DataSourceError(
            f"factory '{cfg.factory}' returned labels of shape {tuple(labels.shape)} {labels.dtype}; "
            "expected a non-empty 1-D integer tensor of class indices",
            key="factory",
        )
    labels = labels.long()
    if int(labels.min()) < 0:
        raise DataSourceError(
            f"factory '{cfg.factory}' returned label {int(labels.min())}; class indices start at 0",
            key="factory",
        )
    return TaskData(
        name="factory",
        inputs=inputs,
        labels=labels,
        num_classes=int(labels.max()) + 1,
        preprocess={
            "input": "tensor",
            "shape": list(inputs.shape[1:]),
            "dtype": str(inputs.dtype).removeprefix("torch."),
            "factory": cfg.factory,
            "kwargs": dict(cfg.kwargs),
        },
    )
