"""Why a channel-pruned ResNet-18 can be slower on the GPU than the unpruned one (issue 5's benchmark).

``benchmarks/prune_real.py`` measured, on the H100 in torch fp16 compiled, the pruned Fashion-MNIST
ResNet-18s (widths multiples of 8, e.g. 40/88/184/376) *slower* than the unpruned one (64/128/256/512).
This probe separates the suspects without inductor: the same ResNet-18 body (3x3 stem, 1 input channel,
28 x 28) at the unpruned widths and at the widths ``prune_real.py`` produced (read from its JSON, or the
defaults below), in fp16, timed as one CUDA graph replay (so launch overhead is out), with cuDNN's
algorithm search off (its heuristics, the default) and on (``torch.backends.cudnn.benchmark``), in NCHW and
channels-last memory layout. It prints a markdown table of p50/p95 ms and writes it to ``--out``.

Usage (GPU):  python benchmarks/conv_width_probe.py --out docs/results/prune-h100/conv-width-probe.md
CPU smoke:    python benchmarks/conv_width_probe.py --device cpu --iterations 3 --out /tmp/probe.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

# stem width, then (inner width, block output width) for each of the 4 stages; from
# docs/results/prune-h100/fashion-resnet.json ("blocks": conv1 widths and downsample widths)
WIDTHS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {
    "unpruned": (64, ((64, 64), (128, 128), (256, 256), (512, 512))),
    "pruned 30 %": (48, ((56, 48), (104, 104), (216, 216), (440, 440))),
    "pruned 50 %": (40, ((48, 40), (88, 88), (184, 184), (376, 376))),
    "pruned 70 %": (32, ((32, 32), (72, 72), (144, 144), (288, 288))),
    "70 % rounded to 64": (64, ((64, 64), (64, 64), (128, 128), (256, 256))),
}


class _Block(nn.Module):
    def __init__(self, cin: int, inner: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, inner, 3, stride, 1, bias=True)
        self.c2 = nn.Conv2d(inner, cout, 3, 1, 1, bias=True)
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=True) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        return torch.relu(self.c2(torch.relu(self.c1(x))) + idt)


def resnet18_body(stem: int, stages: tuple[tuple[int, int], ...], classes: int = 10) -> nn.Module:
    """ResNet-18 with BatchNorm folded (conv biases), 2 blocks per stage, CIFAR-style 3x3 stem."""
    layers: list[nn.Module] = [nn.Conv2d(1, stem, 3, 1, 1), nn.ReLU()]
    cin = stem
    for i, (inner, cout) in enumerate(stages):
        for j in range(2):
            layers.append(_Block(cin, inner, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def time_graph(model: nn.Module, x: torch.Tensor, iterations: int) -> tuple[float, float]:
    """p50/p95 ms of one forward: CUDA graph replay timed with events (CPU: perf_counter)."""
    with torch.inference_mode():
        if x.device.type != "cuda":
            for _ in range(2):
                model(x)
            times = []
            for _ in range(iterations):
                t = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t) * 1e3)
        else:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(5):  # warm-up: cuDNN's algorithm search (when on) happens here
                    model(x)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                model(x)
            for _ in range(20):
                g.replay()
            times = []
            for _ in range(iterations):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
    t = torch.tensor(times)
    return float(t.quantile(0.5)), float(t.quantile(0.95))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Markdown file for the table.")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=300)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --device cpu for a smoke test", file=sys.stderr)
        return 2
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    rows = []
    for name, (stem, stages) in WIDTHS.items():
        base = resnet18_body(stem, stages).eval()
        macs = _macs(base)
        cells = []
        for bench in (False, True):
            for layout in (torch.contiguous_format, torch.channels_last):
                torch.backends.cudnn.benchmark = bench
                m = base.to(device=args.device, dtype=dtype, memory_format=layout)
                x = torch.randn(args.batch, 1, 28, 28, device=args.device, dtype=dtype)
                x = x.contiguous(memory_format=layout)
                p50, p95 = time_graph(m, x, args.iterations)
                cells.append(f"{p50:.3f} / {p95:.3f}")
                print(f"{name:<20} benchmark={bench!s:<5} {str(layout):<28} p50 {p50:.3f} ms", flush=True)
        rows.append(
            f"| {name} | {stem}, "
            + ", ".join(f"{a}/{b}" for a, b in stages)
            + f" | {macs / 1e6:.1f} M | "
            + " | ".join(cells)
            + " |"
        )
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    cmd = "python benchmarks/conv_width_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = "\n".join(
        [
            f"# Conv width probe ({dev}, torch {torch.__version__}, {dtype}, batch {args.batch}, 1x28x28)",
            "",
            f"Command: `{cmd}`",
            "",
            "p50 / p95 ms of one forward, CUDA graph replay (launch overhead excluded). Widths: stem, then "
            "inner/output width per stage.",
            "",
            "| model | widths | MACs / image | heuristics, NCHW | heuristics, channels-last "
            "| cudnn.benchmark, NCHW | cudnn.benchmark, channels-last |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)
    return 0


def _macs(model: nn.Module) -> int:
    """Multiply-accumulates per 1x28x28 image (convolutions and the linear layer)."""
    total = 0

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in hs:
        h.remove()
    return total


if __name__ == "__main__":
    raise SystemExit(main())
