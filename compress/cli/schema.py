"""``compress schema``: print the pipeline JSON Schema (for editors and CI)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def schema(
    target: Annotated[bool, typer.Option("--target", help="Print the deploy-target schema instead.")] = False,
) -> None:
    """Print the JSON Schema of a pipeline file (or of a deploy target)."""
    from compress.config.schema import TargetConfig, pipeline_model

    model = TargetConfig if target else pipeline_model()
    typer.echo(json.dumps(model.model_json_schema(), indent=2))
