"""Latency of pruned MiniLM shapes, rebuilt from a ``prune_real.py`` result (issue 5), without retraining.

Latency does not depend on weight values, so a model with the pruned *shape* times like the pruned model.
This script reads the per-block widths (heads and FFN neurons) that ``benchmarks/prune_real.py`` recorded
in its JSON (``rows[i].blocks``), narrows all-MiniLM-L6-v2 to exactly those widths (keeping the first heads
and neurons; weights are irrelevant here), checks that each rebuilt model has the MAC count the JSON
records, and times every model with ``prune_real``'s harness: each model in a fresh process, the unpruned
model in the same run and on the same inputs. Use it when the pruned checkpoints are not at hand (they were
trained on the lent GPU and did not come back).

Usage:
  python benchmarks/prune_shape_latency.py docs/results/prune-h100/wordnet-minilm.json \\
      --out docs/results/prune-h100 [--device cuda] [--iterations 100] [--batch 32]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package

from distill_real import TASKS  # noqa: E402
from prune_real import TIMINGS, _inputs, _measure  # noqa: E402


def _narrow(lin: nn.Linear, *, out: int | None = None, inp: int | None = None) -> nn.Linear:
    """A copy of ``lin`` keeping its first ``out`` output and first ``inp`` input features."""
    o, i = out or lin.out_features, inp or lin.in_features
    new = nn.Linear(i, o, bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:o, :i])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[:o])
    return new


def narrow_bert(model: nn.Module, blocks: list[dict[str, int]]) -> nn.Module:
    """Narrow a Hugging Face BERT-family classifier in place to the given per-block heads and FFN widths.

    Args:
        model: The model ``compress.models.build_model("hf", ...)`` returns.
        blocks: One ``{"block", "heads", "head_dim", "ffn"}`` per encoder layer, in order.

    Returns:
        ``model``, narrowed.

    Raises:
        ValueError: ``blocks`` does not name every encoder layer once.
    """
    layers = [m for m in model.modules() if hasattr(m, "attention") and hasattr(m, "intermediate")]
    if len(layers) != len(blocks):
        raise ValueError(f"the model has {len(layers)} encoder layers, the result lists {len(blocks)} blocks")
    for layer, b in zip(layers, sorted(blocks, key=lambda b: b["block"]), strict=True):
        att = layer.attention.self
        width = int(b["heads"]) * int(b["head_dim"])
        for p in ("query", "key", "value"):
            setattr(att, p, _narrow(getattr(att, p), out=width))
        att.num_attention_heads, att.all_head_size = int(b["heads"]), width
        layer.attention.output.dense = _narrow(layer.attention.output.dense, inp=width)
        layer.intermediate.dense = _narrow(layer.intermediate.dense, out=int(b["ffn"]))
        layer.output.dense = _narrow(layer.output.dense, inp=int(b["ffn"]))
    return model


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="prune_real.py's JSON for wordnet-minilm.")
    ap.add_argument("--out", type=Path, required=True, help="Folder for the table (markdown + JSON).")
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="Also time on the GPU with cuda."
    )
    ap.add_argument("--batch", type=int, default=32, help="Batch size timed.")
    ap.add_argument("--iterations", type=int, default=100, help="Timed runs per model and runtime.")
    args = ap.parse_args(argv)
    args.same_process = False

    from compress.models import build_model
    from compress.models.stats import count_macs

    res = json.loads(args.result.read_text())
    spec = TASKS["wordnet-minilm"]
    data = dict(spec["data"])
    x = _inputs("wordnet-minilm", data, args.batch)
    tspec = {k: v for k, v in spec["teacher"].items() if k != "source"}
    rows: list[dict[str, Any]] = []
    for r in res["rows"]:
        torch.manual_seed(0)
        model = build_model(spec["teacher"]["source"], tspec).eval()
        if r.get("blocks"):
            blocks = r["blocks"] if isinstance(r["blocks"], list) else ast.literal_eval(r["blocks"])
            narrow_bert(model, blocks)
        macs = count_macs(model, x[:1])
        if macs != r["macs"]:
            raise SystemExit(
                f"{r['model']}: rebuilt shape has {macs:,} MACs, the result records {r['macs']:,}"
            )
        lat = _measure(model, x, args)
        rows.append({"model": r["model"], "test_accuracy": r["test_accuracy"], "macs": macs, "latency": lat})
        print(r["model"], {k: f"{v['p50_ms']:.3f}/{v['p95_ms']:.3f}" for k, v in lat.items()}, flush=True)
    base = rows[0]
    cols = [c for c in TIMINGS if c in base["latency"]]
    head = "| model | test acc | MACs / example | MAC ratio | " + " | ".join(
        f"{c} p50 / p95 ms | speed-up" for c in cols
    )
    lines = [head + " |", "|" + "---|" * (4 + 2 * len(cols))]
    for r in rows:
        cells = [
            r["model"],
            f"{r['test_accuracy']:.4f}",
            f"{r['macs'] / 1e6:.1f} M",
            f"{base['macs'] / r['macs']:.2f}x",
        ]
        for c in cols:
            s, b = r["latency"][c], base["latency"][c]
            cells += [f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f}", f"{b['p50_ms'] / s['p50_ms']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    device = _cpu_name() + (f" + {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
    cmd = "python benchmarks/prune_shape_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"# Pruned MiniLM shapes: latency\n\nCommand: `{cmd}`\n\n"
        f"Device: {device}; torch {torch.__version__}; batch {args.batch} x {x.shape[1]} tokens, "
        f"{args.iterations} timed runs, each model in a fresh process\n\n" + "\n".join(lines) + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wordnet-minilm-shapes.md").write_text(text)
    (args.out / "wordnet-minilm-shapes.json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
