"""The model card: a Markdown page beside the artifacts saying what went in and what came out.

``render_model_card`` turns a plain ``ModelCardInfo`` into Markdown (no I/O, so it is easy to
test and to call from a notebook); the ``export`` stage fills it from the run (teacher, stages
run so far with their headline metrics, data, artifacts with format, size and parity) and
writes ``artifacts/MODEL_CARD.md`` atomically. Numbers are the ones measured at export time;
deploy-target latency and gates come later, in the run's ``report.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelCardInfo:
    """What a model card shows.

    Attributes:
        name: The pipeline (run) name.
        teacher: The teacher's model-source settings (family/source, arch, checkpoint...).
        stages: ``(stage id, kind, headline metrics)`` of every stage before export, in order.
        data: Data source settings and split sizes.
        task: ``num_classes``, input shape and dtype, label names.
        artifacts: One dict per artifact: ``name``, ``file``, ``format``, ``precision``,
            ``size_bytes``, ``parity`` (may be ``None``), and optional ``notes``.
        parity_split: The split the parity numbers were measured on.
        preprocess_file: The preprocess description's file name.
        versions: Package versions (torch, onnx, onnxruntime...).
    """

    name: str
    teacher: dict[str, Any]
    stages: list[tuple[str, str, dict[str, Any]]]
    data: dict[str, Any]
    task: dict[str, Any]
    artifacts: list[dict[str, Any]]
    parity_split: str
    preprocess_file: str = "preprocess.json"
    versions: dict[str, str] = field(default_factory=dict)


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.3f} MB" if n >= 10_000 else f"{n:,} B"


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in d.items() if v not in (None, [], {})
    )


def render_model_card(info: ModelCardInfo) -> str:
    """Markdown for ``info``.

    Example:
        >>> md = render_model_card(ModelCardInfo(name="digits", teacher={"family": "tiny-vit"},
        ...     stages=[], data={"source": "digits"}, task={"num_classes": 10}, artifacts=[],
        ...     parity_split="val"))
        >>> md.splitlines()[0]
        '# Model card: digits'
    """
    lines = [f"# Model card: {info.name}", ""]
    lines += ["## What went in", ""]
    lines.append(f"- **Teacher**: {_kv(info.teacher) or 'unknown'}")
    lines.append(f"- **Data**: {_kv(info.data) or 'unknown'}")
    task = {k: v for k, v in info.task.items() if k != "labels"}
    lines.append(f"- **Task**: {_kv(task)}")
    labels = info.task.get("labels")
    if labels:
        shown = ", ".join(map(str, labels[:20])) + (
            f", ... ({len(labels)} in all)" if len(labels) > 20 else ""
        )
        lines.append(f"- **Labels**: {shown}")
    lines += ["", "### Stages", ""]
    if info.stages:
        lines += ["| stage | kind | metrics at the end of the stage |", "|---|---|---|"]
        for sid, kind, metrics in info.stages:
            shown = ", ".join(f"{k} {_num(v)}" for k, v in metrics.items())
            lines.append(f"| {sid} | {kind} | {shown} |")
    else:
        lines.append("No stage before export: the teacher (or the given model) is exported as it is.")
    lines += ["", "## What came out", ""]
    lines.append(
        f"Parity: each file run with ONNX Runtime CPU (or its runtime) against the torch model it was "
        f"written from, on the `{info.parity_split}` split; accuracy on the same split where labels exist."
    )
    lines += [
        "",
        "| artifact | file | format | precision | size | top-1 agreement | max abs error | cosine "
        "| accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in info.artifacts:
        p = a.get("parity") or {}
        cells = [
            a["name"],
            f"`{a['file']}`",
            a["format"],
            a["precision"],
            _size(a.get("size_bytes")),
            _num(p["top1_agreement"]) if "top1_agreement" in p else "not measured",
            *(_num(p[k]) if k in p else "" for k in ("max_abs_error", "cosine", "accuracy")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [(a["name"], n) for a in info.artifacts for n in a.get("notes", [])]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {name}: {n}" for name, n in notes]
    lines += [
        "",
        "## How to feed it",
        "",
        f"`{info.preprocess_file}` beside this file gives input and output names, shapes (with their "
        "dynamic axes), dtypes, normalisation or tokenizer, and label names.",
    ]
    if info.versions:
        lines += ["", "## Versions", "", _kv(info.versions)]
    return "\n".join(lines) + "\n"
