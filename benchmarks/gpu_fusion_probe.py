"""What fewer kernels and copies buy on a GPU: freezing, fused QKV, a CLS-only last layer, in-graph copies.

Session 10 (docs/results/latency-floor-h100/README.md) left issue 8's 15x H100 goal out of reach on the
``torch-compile`` runtime: the pruned 3-layer student's own GPU time (0.198 ms, about 40 kernels of a few
microseconds) allows 14.6x, and one synchronised call adds 0.09 ms on top (copies, replay launch, host
work). This script measures three changes that cut kernels or per-call work, each against the runtime as
it is, for the FP32 teacher and the two pruned fp16 students of ``gpu_compile_modes.py``:

* ``freezing``: ``torch.compile(..., options={"freezing": True})`` under inference mode. Inductor then
  treats the weights as constants and, on CUDA, concatenates linears that share an input (the query, key
  and value projections become one GEMM), folds constants and drops the weight-layout copies;
* ``cls``: a model rewrite. A BERT-style classifier reads only the first token of the last layer (the pooler
  takes ``hidden[:, 0]``), so the last layer's query, attention output, FFN and LayerNorms run on that one
  token; keys and values still cover every token. The logits are the same up to rounding;
* ``qkv``: a model rewrite. Every layer's query, key and value projections become one linear layer (their
  weights concatenated), so one GEMM instead of three per layer; ``qkv+cls`` adds the ``cls`` rewrite;
* ``io-graph``: the host-to-device copy of the input from a pinned buffer and the device-to-host copy of the
  output into a pinned buffer captured inside the CUDA graph, so one call is: write the pinned input, one
  replay, one stream wait. Against ``direct`` (what the runtime's lean path does: a copy, a replay and a
  copy launched separately).

Per model and variant: ``gpu`` (replays queued back to back, CUDA events: the GPU's own time),
``direct`` and ``io-graph`` (one synchronised call, host clock), the number of GPU kernels one call launches
and their summed time (``torch.profiler`` over uncaptured calls of the compiled module), and the largest
difference of the logits from the ``default`` variant's.

  python benchmarks/gpu_fusion_probe.py --out docs/results/latency-floor-h100
CPU smoke test (no CUDA: compiled module on the CPU, ``gpu``/``direct``/``io-graph`` left out):
  python benchmarks/gpu_fusion_probe.py --quick --out /tmp/fp
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts

from gpu_compile_modes import minilm_models  # noqa: E402
from gpu_latency_floor import cpu_timer, cuda_timer, p50_p95  # noqa: E402

VARIANTS = ("default", "freezing", "cls", "freezing+cls", "qkv", "qkv+cls")


class ClsOnlyLayer(nn.Module):
    """A BERT encoder layer computed by hand: optionally one fused QKV GEMM, optionally the first token only.

    ``cls_only``: the layer's output for the first token only (keys and values: all tokens). Exact for the
    last layer of a model whose head reads ``hidden[:, 0]`` (BERT's pooler, RoBERTa's and DistilBERT's
    classification heads). ``fuse_qkv``: the query, key and value projections as one linear layer (their
    weights concatenated, made once here), so one GEMM instead of three. The other submodules are the
    layer's own, so the remaining weights are shared.
    """

    def __init__(self, layer: nn.Module, *, cls_only: bool = True, fuse_qkv: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.cls_only = cls_only
        self.qkv: nn.Linear | None = None
        if fuse_qkv:
            sa = layer.attention.self
            parts = (sa.query, sa.key, sa.value)
            self.split = [lin.out_features for lin in parts]
            qkv = nn.Linear(parts[0].in_features, sum(self.split), bias=parts[0].bias is not None)
            with torch.no_grad():
                qkv.weight.copy_(torch.cat([lin.weight for lin in parts]))
                if qkv.bias is not None:
                    qkv.bias.copy_(torch.cat([lin.bias for lin in parts]))
            self.qkv = qkv.to(parts[0].weight.device, parts[0].weight.dtype)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *a: Any, **kw: Any
    ) -> torch.Tensor:
        att = self.layer.attention
        sa = att.self
        b, t, _ = hidden_states.shape
        hd = sa.attention_head_size
        first = hidden_states[:, :1] if self.cls_only else hidden_states
        tq = first.shape[1]
        if self.qkv is not None:
            q, k, v = self.qkv(hidden_states).split(self.split, dim=-1)
            q = q[:, :tq]
        else:
            q, k, v = sa.query(first), sa.key(hidden_states), sa.value(hidden_states)
        q = q.reshape(b, tq, -1, hd).transpose(1, 2)
        k = k.reshape(b, t, -1, hd).transpose(1, 2)
        v = v.reshape(b, t, -1, hd).transpose(1, 2)
        mask = attention_mask
        if self.cls_only and mask is not None and mask.dim() == 4 and mask.shape[-2] != 1:
            mask = mask[:, :, :1]
        ctx = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sa.scaling)
        ctx = ctx.transpose(1, 2).reshape(b, tq, -1)
        attn_out = att.output(ctx, first)
        return self.layer.output(self.layer.intermediate(attn_out), attn_out)


def rewrite_layers(model: nn.Module, *, cls_only: bool, fuse_qkv: bool) -> nn.Module:
    """A copy of a compress BERT classifier: fused QKV in every layer and/or the last layer on token 0."""
    m = copy.deepcopy(model)
    layers = m.net.bert.encoder.layer
    for i in range(len(layers)):
        last = i == len(layers) - 1
        if fuse_qkv or (cls_only and last):
            layers[i] = ClsOnlyLayer(layers[i], cls_only=cls_only and last, fuse_qkv=fuse_qkv)
    return m


class _Logits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _kernels(fn: Callable[[], Any], cuda: bool) -> dict[str, Any]:
    """GPU kernels one call of ``fn`` launches: count, summed time, the five longest (profiler, 5 calls)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    calls = 5
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    if not cuda:
        return {"kernels": None}
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kern = [e for e in evs if "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    by_name: dict[str, float] = {}
    for e in kern:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / 1e3 / calls
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
    return {
        "kernels": len(kern) / calls,
        "kernel_ms": sum(e.device_time for e in kern) / 1e3 / calls,
        "top": [[n[:90], round(ms, 4)] for n, ms in top],
    }


def _time_variant(
    model: nn.Module,
    dtype: torch.dtype,
    variant: str,
    feed: np.ndarray,
    args: argparse.Namespace,
    ref: torch.Tensor | None,
) -> tuple[dict, torch.Tensor]:
    from compress.runtime.torch_eager import fp32_math

    cuda = torch.cuda.is_available() and not args.quick
    dev = torch.device("cuda" if cuda else "cpu")
    m = rewrite_layers(model, cls_only="cls" in variant, fuse_qkv="qkv" in variant)
    m = _Logits(m.to(dev, dtype=dtype if cuda else torch.float32).eval())
    opts = {"freezing": True} if "freezing" in variant else None
    w, n = args.warmup, args.iterations
    row: dict[str, Any] = {}
    torch._dynamo.reset()
    with torch.inference_mode(), fp32_math(allow_tf32=False):
        t0 = time.perf_counter()
        compiled = (
            torch.compile(m, dynamic=False, options=opts)
            if opts
            else torch.compile(m, mode="default", dynamic=False)
        )
        x = torch.from_numpy(feed).to(dev)
        out = compiled(x)
        for _ in range(2):
            compiled(x)
        if cuda:
            torch.cuda.synchronize()
        row["compile_s"] = time.perf_counter() - t0
        row.update(_kernels(lambda: compiled(x), cuda))
        logits = out.float().cpu()
        row["max_abs_diff_vs_default"] = None if ref is None else float((logits - ref).abs().max())
        if cuda:
            row.update(_graph_paths(compiled, x, feed, w, n))
    torch._dynamo.reset()
    return row, logits


def _capture(compiled: nn.Module, static_in: torch.Tensor, body: Callable[[], Any]) -> torch.cuda.CUDAGraph:
    """``body`` captured in a CUDA graph, after ``compiled`` warmed up on ``static_in`` on a side stream."""
    stream, side = torch.cuda.current_stream(), torch.cuda.Stream()
    side.wait_stream(stream)
    with torch.cuda.stream(side):
        for _ in range(3):
            compiled(static_in)
    stream.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def _graph_paths(compiled: nn.Module, x: torch.Tensor, feed: np.ndarray, w: int, n: int) -> dict[str, Any]:
    """``gpu``, ``direct`` and ``io-graph`` timings of ``compiled`` captured in CUDA graphs."""
    stream = torch.cuda.current_stream()
    static_in, outs = x.clone(), []
    graph = _capture(compiled, static_in, lambda: outs.append(compiled(static_in)))
    static_out = outs[0]
    pin_in = torch.empty(feed.shape, dtype=torch.int64, pin_memory=True)
    pin_out = torch.empty(static_out.shape, dtype=static_out.dtype, pin_memory=True)

    def direct() -> None:
        pin_in.numpy()[...] = feed
        static_in.copy_(pin_in, non_blocking=True)
        graph.replay()
        pin_out.copy_(static_out, non_blocking=True)
        stream.synchronize()

    # the copies inside the graph: captured from and into the pinned buffers
    io_in = x.clone()
    io_pin_in = torch.empty(feed.shape, dtype=torch.int64, pin_memory=True)
    io_pin_out = torch.empty(static_out.shape, dtype=static_out.dtype, pin_memory=True)

    def io_body() -> None:
        io_in.copy_(io_pin_in, non_blocking=True)
        io_pin_out.copy_(compiled(io_in), non_blocking=True)

    io_graph = _capture(compiled, io_in, io_body)

    def io_call() -> None:
        io_pin_in.numpy()[...] = feed
        io_graph.replay()
        stream.synchronize()

    direct()
    io_call()
    same = bool(torch.equal(pin_out, io_pin_out))
    return {
        "gpu": p50_p95(cuda_timer(graph.replay, w, n)),
        "direct": p50_p95(cpu_timer(direct, w, n)),
        "io-graph": p50_p95(cpu_timer(io_call, w, n)),
        "io_graph_same_output": same,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: batch 2 x 16, 3 runs.")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.warmup, args.iterations = 2, 16, 1, 3
    feed = torch.randint(1000, 2000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    feed[1:, args.seq // 2 :] = 0  # padding in all rows but the first: the attention mask matters
    feed = feed.numpy()
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (model, dtype) in minilm_models().items():
        ref = None
        for variant in args.variants:
            row, logits = _time_variant(model, dtype, variant, feed, args, ref)
            ref = logits if ref is None else ref
            rows.append({"model": name, "variant": variant, **row})
            print(json.dumps(rows[-1]), flush=True)
            _write(args, argv, rows)
    print(_write(args, argv, rows))
    return 0


def _cell(r: dict[str, Any], key: str) -> str:
    v = r.get(key)
    return f"{v['p50_ms']:.3f} / {v['p95_ms']:.3f}" if isinstance(v, dict) else ""


def _write(args: argparse.Namespace, argv: list[str] | None, rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | variant | compile s | kernels / call | kernel ms | gpu p50 / p95 ms | direct p50 / p95 ms "
        "| io-graph p50 / p95 ms | max abs logit diff vs default |\n|" + "---|" * 9 + "\n"
    )
    body = []
    for r in rows:
        k = "" if r.get("kernels") is None else f"{r['kernels']:.0f}"
        km = f"{r['kernel_ms']:.3f}" if r.get("kernel_ms") is not None else ""
        d = r["max_abs_diff_vs_default"]
        cells = [
            r["model"],
            r["variant"],
            f"{r['compile_s']:.1f}",
            k,
            km,
            _cell(r, "gpu"),
            _cell(r, "direct"),
            _cell(r, "io-graph"),
            "" if d is None else f"{d:.2e}",
        ]
        body.append("| " + " | ".join(cells) + " |")
    ratio = "| variant | student | gpu | direct | io-graph |\n|---|---|---|---|---|\n"
    for v in dict.fromkeys(r["variant"] for r in rows):
        teach = next((r for r in rows if r["variant"] == v and r["model"].startswith("teacher")), None)
        for r in rows:
            if teach is None or r["variant"] != v or r is teach or "gpu" not in r:
                continue
            cells = [v, r["model"]] + [
                f"{teach[p]['p95_ms'] / r[p]['p95_ms']:.2f}x" for p in ("gpu", "direct", "io-graph")
            ]
            ratio += "| " + " | ".join(cells) + " |\n"
    tops = "\n".join(
        f"- {r['model']}, {r['variant']}: " + "; ".join(f"{n} {ms:.4f} ms" for n, ms in r["top"])
        for r in rows
        if r.get("top")
    )
    cmd = "python benchmarks/gpu_fusion_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    note = " (QUICK: CPU smoke test, numbers meaningless)" if args.quick else ""
    text = (
        f"# Fewer kernels, fewer copies{note}\n\nCommand: `{cmd}`\n\n"
        f"Device: {dev}, torch {torch.__version__}; batch {args.batch} x {args.seq} tokens (rows 1.. padded "
        f"from the middle), {args.iterations} timed runs after {args.warmup} warm-up\n\n{head}"
        + "\n".join(body)
        + f"\n\nTeacher p95 / student p95, same variant:\n\n{ratio}\n"
        f"Longest kernels per call (summed over launches of the same kernel):\n\n{tops}\n"
    )
    (args.out / "fusion-probe.md").write_text(text)
    (args.out / "fusion-probe.json").write_text(
        json.dumps({"command": cmd, "device": dev, "rows": rows}, indent=1)
    )
    return text


if __name__ == "__main__":
    raise SystemExit(main())
