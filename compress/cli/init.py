"""``compress init FILE``: write an annotated starting pipeline (every key with type, default, description)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from compress.cli._common import guarded

STARTER: dict[str, Any] = {
    "name": "my-pipeline",
    "seed": 0,
    "teacher": {"family": "tiny-vit", "config": {"dim": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128}},
    "student": {"keep_layers": [0, 2]},
    "data": {"source": "digits", "batch_size": 64},
    "stages": [{"finetune": {}}, {"distill": {}}, {"prune": {}}, {"qat": {}}, {"export": {}}, {"validate": {"targets": ["cpu-ort"]}}],
    "gates": {"accuracy": {"max_drop": 0.03}, "latency": {"cpu-ort": {"batch": 32, "p95_ms": 50.0}}, "size": {"max_mb": 1.0}},
}


def init(
    file: Annotated[Path, typer.Argument(help="Where to write the pipeline YAML.", dir_okay=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a complete, annotated starting pipeline to FILE (the built-in digits demo)."""
    from compress._utils.io import atomic_write_text
    from compress.config.annotate import annotated_yaml
    from compress.config.schema import pipeline_model
    from compress.errors import BadInputError
    from compress.stages import STAGES

    def go() -> None:
        if file.exists() and not force:
            raise BadInputError(f"{file}: already exists; pass --force to overwrite it")
        data = dict(STARTER)
        data["stages"] = [s for s in STARTER["stages"] if next(iter(s)) in STAGES]
        cfg = pipeline_model().model_validate(data)
        header = (
            "compress pipeline (written by `compress init`).\n"
            "Check it with `compress validate FILE`; run it with `compress run FILE`.\n"
            "Every key is shown with its (type; default) and what it does."
        )
        atomic_write_text(file, annotated_yaml(cfg, header))
        typer.echo(f"wrote {file}")

    guarded(go)
