"""Where ONNX Runtime CPU spends its time in an ONNX file: kernel time per operator type, from ORT's profiler.

Used to see what ONNX Runtime made of a Q/DQ file: an INT8 convolution that ORT fused into an integer
kernel shows up as ``QLinearConv``. A ``Conv``/``FusedConv`` beside many ``DequantizeLinear`` nodes means
it ran the convolution in float on dequantized tensors, so the "INT8" file is slower than the FP32 one.

Usage (inputs are random, shaped like ``compress bench`` feeds them):
  python benchmarks/ort_op_profile.py model.int8-u8.onnx --batch 32 --threads 2 [--seq 64]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path


def profile(
    path: Path, *, batch: int, threads: int, runs: int, seq: int | None
) -> list[tuple[str, float, int]]:
    """(operator type, mean kernel ms per run, nodes per run), slowest first."""
    import onnxruntime as ort

    from compress.bench.artifact import _input_maker
    from compress.runtime import open_session

    with open_session("onnxruntime", path, threads=threads) as sess:
        make, _ = _input_maker(sess, seq, argparse.Namespace(name="cli", sequence_length=seq))
    feeds = make(batch)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    time: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            time[op] += e["dur"]
            nodes[op] += 1
    return [(op, us / runs / 1000, nodes[op] // runs) for op, us in time.most_common()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="Profiled runs (the first includes warm-up).")
    ap.add_argument("--seq", type=int, default=None, help="Token length for token-id inputs.")
    args = ap.parse_args(argv)
    rows = profile(args.onnx, batch=args.batch, threads=args.threads, runs=args.runs, seq=args.seq)
    print(f"# {args.onnx} (ORT CPU, {args.threads} threads, batch {args.batch}, {args.runs} runs)\n")
    print(profile_table(rows))
    return 0


def profile_table(rows: list[tuple[str, float, int]]) -> str:
    """``profile``'s rows as a markdown table with each operator's share and a total line."""
    total = sum(ms for _, ms, _ in rows)
    lines = ["| operator | kernel ms / run | share | nodes / run |", "|---|---|---|---|"]
    lines += [f"| {op} | {ms:.2f} | {100 * ms / total:.1f} % | {n} |" for op, ms, n in rows]
    return "\n".join([*lines, f"| total | {total:.2f} | | |"])


if __name__ == "__main__":
    sys.exit(main())
