"""Every export format on every runtime that loads it (issue 7's device run): parity with the torch source.

For each model it runs one ``compress`` pipeline, finetune -> INT8 QAT -> export in every format
(TensorRT engines too where ``tensorrt`` imports), then loads each artifact in every runtime that
can run it here and compares its logits on the validation split with the torch model the artifact
was written from (``compress.export.parity.compare_outputs``; the source runs in FP32 on the CPU):

* ONNX FP32 / FP16 files: the QAT model with its fake quantizers off (the float weights);
* ONNX INT8 S8S8 / U8S8 Q/DQ files: the fake-quant model (same learned scales);
* ONNX INT4 files (blocked DequantizeLinear, MatMulNBits): the model holding the same INT4 weights;
* the torch artifact (``torch-fp32``): the float model, run by torch eager FP32, torch.compile FP16
  (CUDA graphs) and torchao's dynamic INT8.

Each cell is judged with the export stage's default tolerance for the precision the runtime computes
in (FP16 for torch.compile FP16, INT8 for torchao). Runtimes: ONNX Runtime CPU (2 threads) and CUDA,
torch (CPU, or CUDA with ``--device cuda``), torch-compile and torchao-int8 (CUDA), TensorRT (CUDA).

Models (real architectures; short training, because parity, not accuracy, is measured here):
  demo             the built-in tiny-vit on scikit-learn's digits (pipelines/digits.yaml's teacher)
  fashion-resnet   ResNet-18 (1 channel, 3x3 stem) on Fashion-MNIST
  wordnet-minilm   all-MiniLM-L6-v2 on the 45 WordNet supersenses (30k-synset subset, 64 tokens)

Usage (GPU box; the Fashion-MNIST and WordNet folders as the Debian packages lay them out):
  python benchmarks/every_format.py --device cuda --out docs/results/every-format-h100 \\
      --fashion-root /usr/share/datasets/fashion-mnist --wordnet-root /usr/share/wordnet
CPU smoke test (tiny subsets, one epoch; numbers meaningless):
  python benchmarks/every_format.py --quick --out /tmp/every-format
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package

from distill_real import TASKS, _run, run_data  # noqa: E402

ONNX_FORMATS = ["onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int8-u8", "onnx-int4", "onnx-int4-matmulnbits"]
ENGINE_FORMATS = ["tensorrt-fp16", "tensorrt-int8"]

MODELS: dict[str, dict[str, Any]] = {
    "demo": {
        "teacher": {"family": "tiny-vit", "config": {"dim": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128}},
        "data": {"source": "digits", "batch_size": 64},
        "finetune": {"epochs": 20, "lr": 0.003},
        "qat": {"epochs": 2, "lr": 0.0005},
    },
    "fashion-resnet": {
        "teacher": TASKS["fashion-resnet"]["teacher"],
        "data": TASKS["fashion-resnet"]["data"],
        "finetune": {"epochs": 2, "lr": 0.002, "weight_decay": 0.05, "precision": "bf16"},
        "qat": {"epochs": 1, "lr": 0.0002},
        "root": "fashion_root",
    },
    "wordnet-minilm": {
        "teacher": TASKS["wordnet-minilm"]["teacher"],
        "data": {**TASKS["wordnet-minilm"]["data"], "subset": 30000},
        "finetune": {"epochs": 1, "lr": 0.0001, "precision": "bf16"},
        "qat": {"epochs": 1, "lr": 0.00005},
        "root": "wordnet_root",
    },
}

# (column, runtime, device, threads, compute precision, formats it loads, tolerance key or None = the file's)
RUNS: list[tuple[str, str, str, int | None, str | None, str, str | None]] = [
    ("ort-cpu", "onnxruntime", "cpu", 2, None, "onnx", None),
    ("ort-cuda", "onnxruntime", "cuda", None, None, "onnx", None),
    ("torch-cpu-fp32", "torch", "cpu", 2, "fp32", "torch", "fp32"),
    ("torch-cuda-fp32", "torch", "cuda", None, "fp32", "torch", "fp32"),
    ("torch-compile-fp16", "torch-compile", "cuda", None, "fp16", "torch", "fp16"),
    ("torchao-int8", "torchao-int8", "cuda", None, None, "torch", "int8"),
    ("tensorrt", "tensorrt", "cuda", None, None, "tensorrt", None),
]


def pipeline_doc(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline for ``name``: finetune -> 8-bit QAT -> export every format this machine can write."""
    m = copy.deepcopy(MODELS[name])
    data = dict(m["data"])
    if m.get("root") and getattr(args, m["root"]):
        data["root"] = getattr(args, m["root"])
    finetune, qat = dict(m["finetune"]), dict(m["qat"])
    if args.device == "cpu":
        finetune.pop("precision", None)
    if args.quick:
        data["subset"] = {"demo": 400, "fashion-resnet": 300, "wordnet-minilm": 200}[name]
        finetune["epochs"] = qat["epochs"] = 1
        if "max_length" in data:
            data["max_length"] = 16
        if "stem" in m["teacher"]:
            m["teacher"] = {**m["teacher"], "stem": "imagenet"}  # 16x fewer MACs: the smoke test stays short
    formats = list(ONNX_FORMATS) + ["torch-fp32"]
    if importlib.util.find_spec("tensorrt") is not None:
        formats += ENGINE_FORMATS
    # parity on 2,048 examples: each format runs several times on the CPU, which took over 9 minutes for
    # the full-resolution ResNet-18 on the whole 6,000-image split (H100 machine, other jobs beside it)
    export: dict[str, Any] = {"formats": formats, "parity_examples": 2048}
    if args.quick:  # an untrained model's logits are nearly flat: top-1 flips on rounding alone
        export["tolerances"] = {"int8": {"min_top1_agreement": 0.5}}
    return {
        "name": f"every-format-{name}",
        "seed": 0,
        "teacher": m["teacher"],
        "data": data,
        "stages": [
            {"finetune": {"train": finetune}},
            {
                "qat": {
                    "quant": {
                        "weights": {"bits": 8, "per_channel": True, "learn_scale": True},
                        "activations": {"bits": 8, "learn_scale": True},
                        "calibration": {"method": "percentile", "batches": 8},
                    },
                    "train": qat,
                }
            },
            {"export": export},
        ],
    }


def parity_matrix(
    name: str, manifest: dict[str, Any], run_dir: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One row per (artifact, runtime that loads it): parity with the artifact's torch source, or why not."""
    import torch

    from compress.export.config import ParityTolerancesConfig
    from compress.export.parity import check_parity, compare_outputs
    from compress.models import load_model
    from compress.runtime import RUNTIMES, open_session
    from compress.stages.export import ENGINE_FORMATS as ENGINES
    from compress.stages.export import ONNX_FORMATS as ONNX
    from compress.stages.export import ExportStageConfig
    from compress.train.loop import predict

    qat = next(s for s in manifest["stages"] if s["kind"] == "qat")
    qat_model = load_model(run_dir / "stages" / qat["id"] / "model.pt").eval()
    doc = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    ecfg = ExportStageConfig(**next(s["export"] for s in doc["stages"] if "export" in s))
    tolerances = ParityTolerancesConfig()
    x, y = run_data(run_dir.parent).tensors("val")
    if args.max_examples:
        x, y = x[: args.max_examples], y[: args.max_examples]
    refs: dict[str, Any] = {}  # the torch source's logits, by source: computed once, compared many times
    rows: list[dict[str, Any]] = []
    for art in _artifacts(manifest):
        if art["format"] == "onnx":
            key, fmt = ONNX.get(art["name"]).precision, ONNX.get(art["name"])
        elif art["format"] == "tensorrt":
            fmt = ONNX.get(ENGINES.get(art["name"]).onnx)
            key = fmt.precision
        else:  # the torch artifact holds the float model, as the FP32/FP16 files do
            key, fmt = "fp32", None
        key = {"fp16": "fp32"}.get(key, key)
        if key not in refs:
            src = fmt.source(qat_model, ecfg) if fmt is not None else load_model(run_dir / art["path"])
            refs[key] = predict(src.cpu().float(), x, batch_size=args.batch).double().numpy()
            del src
        for col, runtime, device, threads, precision, loads, tol_key in RUNS:
            if loads != art["format"] or (device == "cuda" and args.device != "cuda"):
                continue
            row: dict[str, Any] = {
                "model": name,
                "artifact": art["name"],
                "runtime": col,
                "tolerance": tol_key or art["precision"],
            }
            ok, why = RUNTIMES.get(runtime).can_run_here(device)
            if not ok:
                rows.append({**row, "error": f"not run here: {why}"})
                print(_line(rows[-1]), flush=True)
                continue
            try:
                with open_session(
                    runtime, run_dir / art["path"], device=device, threads=threads, precision=precision
                ) as sess:
                    got = _session_logits(sess, x, args.batch)
            except Exception as e:  # one cell failing must not lose the others: it is reported in the table
                rows.append({**row, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
                print(_line(rows[-1]), flush=True)
                traceback.print_exc()
                continue
            par = compare_outputs(got, refs[key], what=f"{art['name']} on {col}")
            par["accuracy"] = float((got.argmax(-1) == y.numpy()).mean())
            problems = check_parity(par, getattr(tolerances, row["tolerance"]))
            rows.append({**row, **par, "within_tolerance": not problems, "problems": problems})
            print(_line(rows[-1]), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def _session_logits(sess: Any, x: Any, batch: int) -> Any:
    """A runtime session's first output over ``x`` in batches, as one float64 array."""
    import numpy as np

    from compress.export.parity import as_numpy_input

    name = sess.inputs[0].name
    outs = [sess.run({name: as_numpy_input(x[i : i + batch])})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float64)


def _artifacts(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, **v} for k, v in manifest["artifacts"].items()]


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['model']:<15} {r['artifact']:<22} {r['runtime']:<19} {r['error']}"
    verdict = "ok" if r["within_tolerance"] else "OUT: " + "; ".join(r["problems"])
    return (
        f"{r['model']:<15} {r['artifact']:<22} {r['runtime']:<19} max|d| {r['max_abs_error']:.3g}  "
        f"cos {r['cosine']:.6f}  top1 {r['top1_agreement']:.4f}  acc {r['accuracy']:.4f}  {verdict}"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | artifact | runtime | max abs error | cosine | top-1 agreement | accuracy | tolerance "
        "| verdict |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['artifact']} | {r['runtime']} | – | – | – | – | {r['tolerance']} | "
                f"{r['error'].replace('|', '/')} |"
            )
            continue
        verdict = "within" if r["within_tolerance"] else "OUT: " + "; ".join(r["problems"])
        lines.append(
            f"| {r['model']} | {r['artifact']} | {r['runtime']} | {r['max_abs_error']:.3g} | "
            f"{r['cosine']:.6f} | {r['top1_agreement']:.4f} | {r['accuracy']:.4f} | {r['tolerance']} | "
            f"{verdict} |"
        )
    return head + "\n".join(lines)


def _write(
    args: argparse.Namespace, argv: list[str] | None, rows: list[dict[str, Any]], runs: dict[str, Any]
) -> str:
    """Write the table so far (markdown + JSON); called after every model, so a cut-off run keeps its rows."""
    import torch

    table = _table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/every_format.py " + " ".join(sys.argv[1:] if argv is None else argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    versions = _versions()
    note = " (QUICK: tiny subsets, numbers meaningless)" if args.quick else ""
    sizes = "\n".join(
        f"- {m}: "
        + ", ".join(f"{a} {b / 1e6:.2f} MB" for a, b in r["sizes"].items())
        + f"; {r['wall_s']:.0f} s"
        for m, r in runs.items()
    )
    (args.out / "every-format.md").write_text(
        f"# Every format on every runtime{note}\n\nCommand: `{cmd}`\n\nDevice: {dev}; {versions}\n\n"
        f"Artifact sizes and pipeline wall time:\n{sizes}\n\n{table}\n"
    )
    (args.out / "every-format.json").write_text(
        json.dumps(
            {"command": cmd, "device": dev, "versions": versions, "runs": runs, "rows": rows}, indent=2
        )
    )
    return table


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "torchao", "tensorrt", "transformers"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the table (markdown + JSON).")
    ap.add_argument(
        "--work", type=Path, default=None, help="Folder for run directories (default: <out>/runs)."
    )
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Also run the CUDA runtimes.")
    ap.add_argument(
        "--quick", action="store_true", help="Tiny subsets, one epoch (a smoke test, not a result)."
    )
    ap.add_argument("--batch", type=int, default=256, help="Examples per runtime call.")
    ap.add_argument(
        "--max-examples", type=int, default=None, help="Compare on at most this many val examples."
    )
    ap.add_argument(
        "--fashion-root", default=None, help="Fashion-MNIST folder (default: the Debian package's)."
    )
    ap.add_argument("--wordnet-root", default=None, help="WordNet folder (default: the Debian package's).")
    args = ap.parse_args(argv)
    work = args.work or args.out / "runs"
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    for name in args.models:
        folder = work / name
        manifest, wall = _run(pipeline_doc(name, args), folder)
        runs[name] = {
            "wall_s": wall,
            "sizes": {a["name"]: a["size_bytes"] for a in _artifacts(manifest)},
            "export_parity_ort_cpu": {
                k: v.get("parity") for k, v in manifest["stages"][-1]["metrics"]["formats"].items()
            },
        }
        rows += parity_matrix(name, manifest, folder / "run", args)
        _write(args, argv, rows, runs)
    print(_write(args, argv, rows, runs))
    bad = [r for r in rows if "error" not in r and not r["within_tolerance"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
