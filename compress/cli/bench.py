"""``compress bench ARTIFACT --target NAME``: measure one ONNX, TensorRT or torch artifact alone on a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from compress.cli._common import guarded


def bench(
    artifact: Annotated[
        Path,
        typer.Argument(
            help="An .onnx, .engine/.plan or compress model .pt file.", exists=True, dir_okay=False
        ),
    ],
    target: Annotated[
        str, typer.Option("--target", "-t", help="Deploy target name (see `compress targets`).")
    ],
    batch: Annotated[
        list[int] | None,
        typer.Option("--batch", "-b", help="Batch size to time (repeat for several); default: the target's."),
    ] = None,
    deploy_dir: Annotated[
        Path | None, typer.Option("--deploy-dir", help="Folder of deploy targets (default ./deploy).")
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option("--warmup", min=0, help="Untimed runs per batch size (default: the target's)."),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option("--iterations", min=1, help="Timed runs per batch size (default: the target's)."),
    ] = None,
    repeats: Annotated[
        int | None, typer.Option("--repeats", min=1, help="Timing sweeps (default: the target's).")
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq",
            "--seq-len",
            min=1,
            help="Token length fed to token-id inputs (and size of other symbolic non-batch axes); "
            "default: the target's sequence_length.",
        ),
    ] = None,
    macs: Annotated[
        int | None,
        typer.Option("--macs", min=0, help="MACs per example, for the roofline of ONNX/TensorRT files."),
    ] = None,
    no_roofline: Annotated[
        bool, typer.Option("--no-roofline", help="Skip the device-rate measurement and roofline.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Time ARTIFACT on a deploy target: p50/p90/p95/p99, throughput, memory, roofline floor.

    Exit codes: 0 measured, 2 bad input (unknown target, wrong format, runtime not available here).
    """
    from compress.bench.artifact import bench_artifact
    from compress.cli.targets import default_deploy_dir, find_target

    def go() -> dict[str, Any]:
        t = find_target(target, default_deploy_dir(deploy_dir))
        return bench_artifact(
            artifact,
            t,
            batch_sizes=batch or None,
            warmup=warmup,
            iterations=iterations,
            repeats=repeats,
            seq_len=seq_len,
            macs_per_example=macs,
            roofline=not no_roofline,
        )

    out = guarded(go)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    _print_table(out)


def _print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    mem = out["memory"]
    gpu = "n/a" if mem.get("gpu_peak_mb") is None else f"{mem['gpu_peak_mb']:.1f} MB ({mem['gpu_method']})"
    title = (
        f"{out['artifact']} on {out['target']} ({out['runtime']}, {out['device']}"
        + (f", {out['threads']} threads" if out["threads"] else "")
        + f", {out['precision']}"
        + (f", {out['sequence_length']} tokens" if out.get("sequence_length") is not None else "")
        + ")"
    )
    table = Table(title=title, caption=f"host peak RSS {mem['peak_rss_mb']:.1f} MB; GPU peak {gpu}")
    for col in (
        "batch",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "mean ms",
        "std ms",
        "throughput/s",
        "spread ms",
        "clock",
        "floor ms",
        "p95/floor",
    ):
        table.add_column(col, justify="right")
    roof = (out.get("roofline") or {}).get("by_batch", {})
    for b, s in out["latency"].items():
        r = roof.get(b)
        table.add_row(
            b,
            *(f"{s[k]:.3f}" for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms")),
            f"{s['throughput_per_s']:.0f}",
            f"{s['p50_spread_ms']:.3f}",
            s["clock"],
            f"{r['floor_ms']:.4f} ({r['bound']})" if r else "n/a",
            f"{r['p95_over_floor']:.1f}x" if r else "n/a",
        )
    console = Console(width=200 if not Console().is_terminal else None)
    console.print(table)
    why = (out.get("roofline") or {}).get("unavailable")
    if why:
        console.print(f"roofline: {why}")
    if out.get("timing_note"):
        console.print(f"warning: {out['timing_note']}")
