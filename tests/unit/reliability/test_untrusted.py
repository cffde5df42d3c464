"""Untrusted files run no code: pickles are loaded with ``weights_only=True`` everywhere, ONNX external
data cannot point outside the model's folder, YAML runs no tags and alias bombs fail fast, and the
source tree has no ``eval``/``exec``/shell/unsafe loaders.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from compress._utils.io import sha256_file
from compress.cli._common import guarded
from compress.config.loader import MAX_NODES
from compress.runtime import open_session
from compress.runtime.onnxruntime import check_external_data
from tests.unit.reliability.conftest import ROOT, cli, write_pipeline


class _Plant:
    """Unpickling this calls ``os.system('touch MARKER')``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _pipeline_with_checkpoint(tmp_path: Path, ck: Path) -> Path:
    return write_pipeline(
        tmp_path,
        f"name: t\nteacher:\n  family: tiny-vit\n  config: {{dim: 32, depth: 2}}\n  checkpoint: {ck}\n"
        "stages:\n  - distill: {train: {epochs: 1}}\n",
    )


@pytest.mark.parametrize("fmt", ["torch-save", "raw-pickle", "inside-a-state-dict"])
def test_planted_pickle_as_teacher_checkpoint_never_runs(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "PWNED"
    ck = tmp_path / "evil.pt"
    if fmt == "torch-save":
        torch.save(_Plant(marker), ck)
    elif fmt == "raw-pickle":
        ck.write_bytes(pickle.dumps(_Plant(marker), protocol=2))
    else:
        torch.save({"state_dict": {"head.weight": torch.zeros(1), "hook": _Plant(marker)}}, ck)
    p = _pipeline_with_checkpoint(tmp_path, ck)
    r = cli("run", p, "--run-dir", tmp_path / "run", "--quiet")
    assert r.exit_code == 2, r.output
    assert not marker.exists()
    assert "Traceback" not in r.output
    assert (
        f"{p}:5: teacher.checkpoint: {ck}: refused: loading it would import and run Python code" in r.stderr
    )
    assert "system" in r.stderr  # names the callable it would have run
    assert not (tmp_path / "run").exists()


def test_planted_pickle_in_a_cached_stage_never_runs(tmp_path: Path) -> None:
    """A tampered run dir (model.pt swapped for a pickle, its recorded hash updated) is refused."""
    text = (
        "name: t\nteacher: {family: tiny-vit, config: {dim: 32, depth: 2}}\nstudent: {keep_layers: [1]}\n"
        "stages:\n  - finetune: {train: {epochs: 1}}\n  - distill: {train: {epochs: 1}}\n"
    )
    p = write_pipeline(tmp_path, text)
    rd = tmp_path / "run"
    assert cli("run", p, "--run-dir", rd, "--quiet").exit_code == 0
    marker = tmp_path / "PWNED"
    sdir = rd / "stages" / "01-finetune"
    torch.save(_Plant(marker), sdir / "model.pt")
    result = json.loads((sdir / "result.json").read_text())
    result["files"]["model.pt"] = sha256_file(sdir / "model.pt")
    (sdir / "result.json").write_text(json.dumps(result))
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert not marker.exists()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert "model.pt: refused: the file needs code to be unpickled" in r.stderr


def test_planted_pickle_as_a_training_checkpoint_never_runs(tmp_path: Path) -> None:
    """The per-epoch resume checkpoint is read with weights_only=True too."""
    text = "name: t\nteacher: {family: tiny-vit, config: {dim: 32, depth: 2}}\nstages:\n  - finetune: {train: {epochs: 1}}\n"
    p = write_pipeline(tmp_path, text)
    rd = tmp_path / "run"
    marker = tmp_path / "PWNED"
    # a finished run, then a "crash" of its stage: the folder keeps its stage key, so the planted
    # checkpoint is the one the resume reads (a folder of another key would be cleared unread)
    assert cli("run", p, "--run-dir", rd, "--quiet").exit_code == 0
    (rd / "stages" / "01-finetune" / "result.json").unlink()
    torch.save({"key": _Plant(marker)}, rd / "stages" / "01-finetune" / "train.ckpt")
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert not marker.exists()
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    assert "stage 'finetune' (stages[0].finetune): UnpicklingError: Weights only load failed" in r.stderr


def test_yaml_python_tag_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    p = write_pipeline(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    r = cli("validate", p)
    assert r.exit_code == 2
    assert not marker.exists()
    assert "unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'" in r.stderr


def test_yaml_alias_bomb_fails_fast_in_bounded_memory(tmp_path: Path) -> None:
    """Nine levels of nine aliases would expand to 9**9 (387 million) values."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    p = write_pipeline(tmp_path, "\n".join(lines) + "\nname: t\n")
    t0 = time.process_time()
    r = cli("validate", p)
    cpu_s = time.process_time() - t0
    assert r.exit_code == 2
    assert f"{p}:1: the document expands to more than {MAX_NODES:,} values" in r.stderr
    assert cpu_s < 2.0
    tracemalloc.start()
    try:
        assert cli("validate", p).exit_code == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB"


# --------------------------------------------------------------------------- ONNX external data


def _onnx_with_external(folder: Path, location: str, *, in_subgraph: bool = False) -> Path:
    """A 4x4 MatMul whose weight lives in external data at ``location``."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "64"}.items():
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    if in_subgraph:  # an If whose branches hold the weight as a Constant: attribute tensors are checked too
        const = helper.make_node("Constant", [], ["Wc"], value=w)
        branch = helper.make_graph(
            [const, helper.make_node("MatMul", ["input", "Wc"], ["out"])], "b", [], [y]
        )
        branch.output[0].name = "out"
        cond = numpy_helper.from_array(np.array(True), "cond")
        node = helper.make_node("If", ["cond"], ["logits"], then_branch=branch, else_branch=branch)
        graph = helper.make_graph([node], "g", [x], [y], [cond])
    else:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["input", "W"], ["logits"])], "g", [x], [y], [w]
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


_app = typer.Typer()


@_app.command()
def _load(path: Path) -> None:
    def go() -> None:
        with open_session("onnxruntime", path, threads=1) as s:
            s.run({"input": np.ones((2, 4), np.float32)})

    guarded(go)


@pytest.mark.parametrize(
    ("location", "subgraph", "why"),
    [
        ("../outside.bin", False, "outside "),
        ("sub/../../outside.bin", False, "outside "),
        ("/etc/hostname", False, "an absolute path"),
        ("", False, "no location"),
        ("link.bin", False, "outside "),
        ("../outside.bin", True, "outside "),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "empty", "symlink-out", "in-a-subgraph"],
)
def test_onnx_external_data_outside_the_folder_is_refused(
    tmp_path: Path, location: str, subgraph: bool, why: str
) -> None:
    model_dir = tmp_path / "artifacts"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.ones((4, 4), np.float32).tobytes())
    (model_dir / "link.bin").symlink_to(tmp_path / "outside.bin")
    path = _onnx_with_external(model_dir, location, in_subgraph=subgraph)
    r = CliRunner().invoke(_app, [str(path)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    want = f"error: runtime 'onnxruntime': {path}: tensor 'W' keeps its data at '{location}' ({why}"
    assert r.stderr.startswith(want), r.stderr
    assert "re-export the model or move the data file beside it" in r.stderr


def test_onnx_external_data_beside_the_model_loads(tmp_path: Path) -> None:
    (tmp_path / "model.onnx.data").write_bytes(np.full((4, 4), 2.0, np.float32).tobytes())
    path = _onnx_with_external(tmp_path, "model.onnx.data")
    check_external_data(path)
    with open_session("onnxruntime", path, threads=1) as s:
        out = s.run({"input": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_allclose(out, np.full((1, 4), 8.0, np.float32))


# ------------------------------------------------------------------------------- source hygiene

_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_ATTRS = {
    ("os", "system"), ("os", "popen"), ("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"),
    ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"), ("dill", "load"),
}  # fmt: skip
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Calls that could run code from data: eval/exec, shells, pickle, unsafe YAML, torch.load without weights_only."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        parts = tuple(name.split(".")[-2:])
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{filename}:{node.lineno}: {name}("
        if name in _FORBIDDEN_CALLS or parts in _FORBIDDEN_ATTRS:
            found.append(where)
        elif name.endswith("torch.load"):
            flag = kw.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(where + " without weights_only=True")
        elif parts == ("yaml", "load"):
            loader = kw.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _name(loader).split(".")[-1] not in _SAFE_YAML_LOADERS:
                found.append(where + " without SafeLoader")
        shell = kw.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(where + " shell=")
    return found


def test_the_checker_catches_each_unsafe_call() -> None:
    bad = [
        "eval(x)", "exec(x)", "__import__(x)", "os.system(x)", "pickle.loads(b)", "yaml.load(s)",
        "yaml.load(s, Loader=yaml.Loader)", "yaml.unsafe_load(s)", "torch.load(p)",
        "torch.load(p, weights_only=False)", "subprocess.run(c, shell=True)",
    ]  # fmt: skip
    for src in bad:
        assert unsafe_calls(src), src
    good = ["model.eval()", "yaml.load(s, Loader=yaml.SafeLoader)", "yaml.safe_load(s)",
            "torch.load(p, map_location='cpu', weights_only=True)", "subprocess.run([a, b])"]  # fmt: skip
    for src in good:
        assert not unsafe_calls(src), src


def test_compress_has_no_eval_exec_shell_or_unsafe_loading() -> None:
    found = []
    for path in sorted((ROOT / "compress").rglob("*.py")):
        found += unsafe_calls(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []


def test_compress_source_text_has_no_shell_or_unsafe_yaml() -> None:
    """A plain grep too, for spellings the AST check would miss (``getattr(os, 'system')``)."""
    needles = ["shell=True", "os.system", "yaml.load(", "yaml.Loader", "UnsafeLoader", "pickle.load"]
    hits = []
    for path in sorted((ROOT / "compress").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{i}: {n}" for n in needles if n in line]
    assert hits == []
