"""The bad-input catalogue: every input a user gives, each wrong in one way, through the CLI.

Every case must end with exit 2 and one message on stderr that names the file and line with the
YAML path (or the CLI argument), what was given, what is expected and the fix; no traceback; and no
run directory written (a run that fails its checks creates none and leaves an existing one as it
was). Data-file cases for sources that do not exist yet are listed in docs/reliability.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from compress.cli._common import guarded
from compress.config.loader import MAX_BYTES
from compress.models import build_model, save_model
from compress.runtime import open_session
from tests.unit.reliability.conftest import cli, make_deploy_dir, snapshot

BASE = """\
name: t
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
stages:
  - finetune: {train: {epochs: 1}}
"""

FULL = """\
name: t
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
stages:
  - finetune: {train: {epochs: 1}}
  - qat: {train: {epochs: 1}}
  - export: {formats: [onnx-fp32, onnx-int8-u8]}
  - validate: {targets: [cpu-ort]}
"""

CKPT = """\
name: t
teacher:
  family: tiny-vit
  config: {dim: 32, depth: 2}
  checkpoint: CK
stages:
  - distill: {train: {epochs: 1}}
"""


@dataclass
class Case:
    """One bad input: the pipeline text (and optional target text) and what stderr must say.

    ``expect`` fragments may use ``{f}`` for the pipeline path and ``{d}`` for its folder.
    """

    id: str
    text: str | bytes
    expect: list[str]
    target: str | None = None
    problems: int = 1
    setup: Callable[[Path], None] | None = field(default=None, repr=False)


def _fill(text: str, **values: object) -> str:
    """Replace ``{name}`` placeholders only (expectations contain YAML braces)."""
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def _swap(old: str, new: str, base: str = BASE) -> str:
    assert old in base
    return base.replace(old, new)


_TARGET = (Path(__file__).resolve().parents[3] / "deploy" / "cpu-ort.yaml").read_text()

PIPELINE_CASES = [
    Case(
        "yaml-syntax",
        "name: t\nteacher: {family: tiny-vit\nstages: []\n",
        ["{f}:3: YAML syntax error", "expected ',' or '}'", "check indentation, colons and quotes"],
    ),
    Case(
        "yaml-tab",
        "name: t\nteacher:\n\tfamily: tiny-vit\n",
        ["{f}:3: YAML syntax error: a tab character is used for indentation", "indent with spaces, not tabs"],
    ),
    Case("empty-file", "", ["{f}: the pipeline file is empty", "compress init --force {f}"]),
    Case("comments-only", "# just a comment\n", ["{f}: the pipeline file is empty"]),
    Case(
        "list-root",
        "- finetune\n- distill\n",
        ["{f}:1: the pipeline file holds a list", "expected a mapping of keys (name:, teacher:, stages:"],
    ),
    Case("scalar-root", "finetune\n", ["{f}:1: the pipeline file holds a str", "expected a mapping"]),
    Case(
        "unknown-key-top",
        _swap("name: t", "name: t\nsed: 3"),
        ["{f}:2: sed: unknown key 'sed' (did you mean 'seed'?)", "valid keys here: data, gates, name"],
    ),
    Case(
        "unknown-key-teacher",
        _swap("{family: tiny-vit,", "{famly: tiny-vit,"),
        [
            "{f}:2: teacher.famly: unknown key 'famly' (did you mean 'family'?)",
            "valid keys here: checkpoint",
            "{f}:2: teacher.family: required key is missing",
        ],
        problems=2,
    ),
    Case(
        "unknown-key-depth-4",
        _swap("{epochs: 1}", "{epocs: 1}"),
        [
            "{f}:4: stages[0].finetune.train.epocs: unknown key 'epocs' (did you mean 'epochs'?)",
            "valid keys here: batch_size, device, epochs",
        ],
    ),
    Case(
        "unknown-key-depth-5",
        BASE + "  - distill: {losses: {kd: {temprature: 2}}}\n",
        [
            "{f}:5: stages[1].distill.losses.kd.temprature: unknown key 'temprature' (did you mean 'temperature'?)",
            "valid keys here: temperature, weight",
        ],
    ),
    Case(
        "unknown-key-gate-budget",
        FULL + "gates: {latency: {cpu-ort: {batch: 32, p95: 5}}}\n",
        ["{f}:8: gates.latency.cpu-ort.p95: unknown key 'p95' (did you mean 'p95_ms'?)"],
    ),
    Case(
        "unknown-stage-kind",
        BASE + "  - distil: {}\n",
        [
            "{f}:5: stages[1]: unknown stage kind 'distil' (did you mean 'distill'?)",
            "valid kinds: distill, export",
        ],
    ),
    Case(
        "stage-not-a-mapping",
        BASE + "  - finetune\n",
        ["{f}:5: stages[1]: got 'finetune'; expected one stage as a one-key mapping `- <kind>: {...}`"],
    ),
    Case(
        "stages-a-mapping",
        "name: t\nteacher: {family: tiny-vit}\nstages: {finetune: {}}\n",
        ["{f}:3: stages: got dict; expected a list of one-key mappings such as `- distill: {epochs: 10}`"],
    ),
    Case(
        "stage-config-a-string",
        _swap("{train: {epochs: 1}}", "fast"),
        ["{f}:4: stages[0].finetune: got 'fast'; expected: Input should be a valid dictionary"],
    ),
    Case(
        "wrong-type-int",
        _swap("{epochs: 1}", "{epochs: many}"),
        ["{f}:4: stages[0].finetune.train.epochs: got 'many'; expected: Input should be a valid integer"],
    ),
    Case(
        "wrong-type-bool-for-int",
        _swap("{epochs: 1}", "{epochs: true}"),
        [
            "{f}:4: stages[0].finetune.train.epochs: got True; expected: a number, not the boolean true",
            "write a number such as 1",
        ],
    ),
    Case(
        "wrong-type-name",
        _swap("name: t", "name: 5"),
        ["{f}:1: name: got 5; expected: Input should be a valid string"],
    ),
    Case(
        "out-of-range-lr",
        _swap("{epochs: 1}", "{epochs: 1, lr: -1}"),
        ["{f}:4: stages[0].finetune.train.lr: got -1; expected: Input should be greater than 0"],
    ),
    Case(
        "out-of-range-prune",
        BASE + "  - prune: {target: {macs: 1.5}}\n",
        ["{f}:5: stages[1].prune.target.macs: got 1.5; expected: Input should be less than 0.95"],
    ),
    Case(
        "out-of-range-fraction",
        BASE + "data: {val_fraction: 0.9}\n",
        ["{f}:5: data.val_fraction: got 0.9; expected: Input should be less than 0.5"],
    ),
    Case(
        "unsupported-bits",
        BASE + "  - qat: {quant: {weights: {bits: 3}}}\n",
        ["{f}:5: stages[1].qat.quant.weights.bits: got 3; expected: Input should be 8, 7, 4 or 2"],
    ),
    Case(
        "bad-name",
        _swap("name: t", "name: 'my run/1'"),
        ["{f}:1: name: got 'my run/1'; expected: name 'my run/1' must be 1-64 letters, digits"],
    ),
    Case(
        "schema-version",
        BASE + "schema_version: 2\n",
        ["{f}:5: schema_version: got 2; expected: Input should be 1"],
    ),
    Case(
        "unknown-data-source",
        BASE + "data: {source: mnistt}\n",
        ["{f}:5: data.source: got 'mnistt'; expected: unknown data source 'mnistt'", "valid: digits"],
    ),
    Case(
        "missing-teacher",
        "name: t\nstages:\n  - finetune: {}\n",
        ["{f}:1: teacher: required key is missing (The trained model to compress.); add it"],
    ),
    Case(
        "empty-stages",
        "name: t\nteacher: {family: tiny-vit}\nstages: []\n",
        ["{f}:3: stages: got []; expected: List should have at least 1 item"],
    ),
    Case(
        "duplicate-key",
        BASE + "name: u\n",
        ["{f}:5: name: key 'name' appears twice (first at line 1); keep one"],
    ),
    Case(
        "wrong-order",
        "name: t\nteacher: {family: tiny-vit, config: {dim: 32, depth: 2}}\nstages:\n"
        "  - distill: {}\n  - finetune: {}\n",
        [
            "{f}:5: stages[1].finetune: 'finetune' must come before 'distill'; move it up in stages "
            "(order now: distill, finetune)"
        ],
    ),
    Case(
        "duplicate-max-count-stage",
        BASE + "  - finetune: {}\n",
        ["{f}:5: stages[1].finetune: 'finetune' may appear at most 1 time(s); remove the extra one"],
    ),
    Case(
        "validate-without-export",
        "name: t\nteacher: {family: tiny-vit, config: {dim: 32, depth: 2}}\nstages:\n"
        "  - finetune: {}\n  - validate: {targets: [cpu-ort]}\n",
        [
            "{f}:5: stages[1].validate: 'validate' needs an export stage before it; add one earlier in stages",
            "{f}:5: stages[1].validate.targets[0]: target 'cpu-ort' deploys artifact 'onnx-int8-u8', which no "
            "earlier stage writes (formats written: none)",
        ],
        problems=2,
    ),
    Case(
        "int8-export-without-qat",
        BASE + "  - export: {formats: [onnx-int8]}\n",
        [
            "{f}:5: stages[1].export: onnx-int8 needs a qat stage before export",
            "add '- qat: {}' before this export",
        ],
    ),
    Case(
        "target-artifact-not-exported",
        _swap("[onnx-fp32, onnx-int8-u8]", "[onnx-fp32]", FULL),
        [
            "{f}:7: stages[3].validate.targets[0]: target 'cpu-ort' deploys artifact 'onnx-int8-u8', which no "
            "earlier stage writes (formats written: onnx-fp32); add 'onnx-int8-u8' to the export stage's formats",
            "{d}/deploy/cpu-ort.yaml",
        ],
    ),
    Case(
        "missing-checkpoint",
        "name: t\nteacher: {family: tiny-vit, checkpoint: nope.pt}\nstages:\n  - distill: {}\n",
        ["{f}:2: teacher.checkpoint: file {d}/nope.pt not found; fix the path (relative to the YAML)"],
    ),
    Case(
        "checkpoint-is-a-folder",
        "name: t\nteacher: {family: tiny-vit, checkpoint: .}\nstages:\n  - distill: {}\n",
        ["{f}:2: teacher.checkpoint: {d} is a folder; give the checkpoint file inside it"],
    ),
    Case(
        "no-teacher-weights",
        "name: t\nteacher: {family: tiny-vit}\nstages:\n  - distill: {}\n",
        [
            "{f}:2: teacher: the teacher has no checkpoint and no stage trains it",
            "add `checkpoint:` or a `finetune` stage first",
        ],
    ),
    Case(
        "unknown-target",
        _swap("targets: [cpu-ort]", "targets: [cpu-ortt]", FULL),
        [
            "{f}:7: stages[3].validate.targets[0]: unknown target 'cpu-ortt' (did you mean 'cpu-ort'?)",
            "targets in {d}/deploy: cpu-ort",
        ],
    ),
    Case(
        "gate-target-not-validated",
        BASE + "gates: {latency: {cpu-ort: {batch: 1, p50_ms: 1}}}\n",
        [
            "{f}:5: gates.latency.cpu-ort: latency budget for target 'cpu-ort', which no validate stage measures",
            "add it to a validate stage's targets",
        ],
    ),
    Case(
        "gate-batch-not-timed",
        FULL + "gates: {latency: {cpu-ort: {batch: 7, p50_ms: 1}}}\n",
        ["{f}:8: gates.latency.cpu-ort.batch: got 7; expected one of the target's batch_sizes [1, 32]"],
    ),
    Case(
        "gate-without-measurements",
        BASE + "gates: {accuracy: {max_drop: 0.1}}\n",
        ["{f}:5: gates: gates accuracy need measurements; add a `validate` stage with at least one target"],
    ),
    Case(
        "teacher-builder-argument",
        _swap("depth: 2", "depht: 2"),
        [
            "{f}:2: teacher.config: family 'tiny-vit' cannot build",
            "unexpected keyword argument 'depht'",
            "fix teacher.config",
        ],
    ),
    Case(
        "teacher-builder-value",
        _swap("depth: 2", "depth: 2, num_heads: 0"),
        ["{f}:2: teacher.config: family 'tiny-vit' cannot build", "ZeroDivisionError", "fix teacher.config"],
    ),
    Case(
        "teacher-size-typo",
        _swap("depth: 2", "depth: 100000000"),
        [
            "{f}:2: teacher.config: got {'dim': 32, 'depth': 100000000}; expected: depth: 100000000 is larger than any "
            "model size compress builds (limit 1,048,576); check the value"
        ],
    ),
    Case(
        "unknown-key-with-brackets",
        BASE + "'[x]': 1\n",
        ["{f}:5: [x]: unknown key '[x]'; valid keys here: data, gates"],
    ),
    Case(
        "python-tag",
        _swap("name: t", "name: !!python/object/apply:os.system ['true']"),
        [
            "{f}:1: name: unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'",
            "only plain values, lists and mappings are allowed",
        ],
    ),
    Case("control-character", "name: t\x00\n", ["{f}:1: YAML cannot contain the control character '\\x00'"]),
    Case(
        "too-deep",
        "a: " + "[" * 3000 + "]" * 3000 + "\n",
        ["{f}: the YAML nests lists or mappings too deeply"],
    ),
    Case(
        "not-utf8",
        "name: caf\xe9\n".encode("latin-1"),
        ["{f}: cannot read the pipeline file as UTF-8 text", "can't decode byte 0xe9"],
    ),
    Case("utf16", BASE.encode("utf-16"), ["{f}: cannot read the pipeline file as UTF-8 text"]),
    Case(
        "many-problems-at-once",
        _swap("name: t", "nam: t") + "seed: x\ndata: {batch_size: 0}\n",
        [
            "4 problems",
            "{f}:1: name: required key is missing",
            "{f}:5: seed: got 'x'",
            "{f}:6: data.batch_size: got 0; expected: Input should be greater than or equal to 1",
            "{f}:1: nam: unknown key 'nam' (did you mean 'name'?)",
        ],
        problems=4,
    ),
    # deploy targets (deploy/cpu-ort.yaml beside the pipeline)
    Case(
        "target-yaml-syntax",
        FULL,
        ["{d}/deploy/cpu-ort.yaml:8: YAML syntax error: expected ',' or ']'"],
        target=_TARGET.replace("runtime: onnxruntime", "runtime: [onnxruntime"),
    ),
    Case(
        "target-unknown-runtime",
        FULL,
        ["{d}/deploy/cpu-ort.yaml:7: runtime: got 'onnxrt' (did you mean 'onnxruntime'?); expected one of: "],
        target=_TARGET.replace("runtime: onnxruntime", "runtime: onnxrt"),
    ),
    Case(
        "target-name-not-stem",
        FULL,
        [
            "{d}/deploy/cpu-ort.yaml:4: name: got 'cpu-ort2'; expected the file stem 'cpu-ort'; rename the file or the target"
        ],
        target=_TARGET.replace("name: cpu-ort", "name: cpu-ort2"),
    ),
    Case(
        "target-unknown-key",
        FULL,
        ["{d}/deploy/cpu-ort.yaml:10: thread: unknown key 'thread' (did you mean 'threads'?)"],
        target=_TARGET.replace("threads: 2", "thread: 2"),
    ),
    Case(
        "target-a-list",
        FULL,
        [
            "{d}/deploy/cpu-ort.yaml:1: the deploy target file holds a list; expected a mapping of keys "
            "(name:, runtime:, artifact: ...)"
        ],
        target="- cpu\n",
    ),
    Case(
        "target-empty",
        FULL,
        ["{d}/deploy/cpu-ort.yaml: the deploy target file is empty; copy a shipped target"],
        target="",
    ),
    Case(
        "target-bad-device",
        FULL,
        ["{d}/deploy/cpu-ort.yaml:6: device: got 'tpu'; expected: Input should be 'cpu' or 'cuda'"],
        target=_TARGET.replace("device: cpu", "device: tpu"),
    ),
]


def _write_case(tmp_path: Path, case: Case) -> Path:
    make_deploy_dir(tmp_path)
    if case.target is not None:
        (tmp_path / "deploy" / "cpu-ort.yaml").write_text(case.target)
    f = tmp_path / "p.yaml"
    if isinstance(case.text, bytes):
        f.write_bytes(case.text)
    else:
        f.write_text(case.text)
    return f


def assert_one_clean_message(stderr: str, expect: list[str], problems: int = 1) -> None:
    """Exit-2 diagnostics: starts with 'error: ', has every fragment, no traceback, one line per problem."""
    assert "Traceback" not in stderr
    assert stderr.startswith("error: "), stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln]
    assert sum(ln.startswith("error:") for ln in lines) == 1, stderr
    assert len(lines) == (1 if problems == 1 else problems + 1), stderr
    for frag in expect:
        assert frag in stderr, f"{frag!r} not in:\n{stderr}"


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=lambda c: c.id)
def test_pipeline_and_target_cases_refused_by_run_before_any_write(tmp_path: Path, case: Case) -> None:
    f = _write_case(tmp_path, case)
    rd = tmp_path / "run"
    r = cli("run", f, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    assert_one_clean_message(r.stderr, [_fill(e, f=f, d=tmp_path) for e in case.expect], case.problems)
    assert not rd.exists()
    assert r.stdout == ""


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=lambda c: c.id)
def test_validate_gives_the_same_message(tmp_path: Path, case: Case) -> None:
    f = _write_case(tmp_path, case)
    r = cli("validate", f)
    assert r.exit_code == 2, r.output
    assert_one_clean_message(r.stderr, [_fill(e, f=f, d=tmp_path) for e in case.expect], case.problems)


def test_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    f = tmp_path / "huge.yaml"
    with f.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: the size check must come before any read
    r = cli("run", f, "--run-dir", tmp_path / "run")
    assert r.exit_code == 2
    assert_one_clean_message(
        r.stderr, [f"{f}: 4,000,001 bytes is too large for a pipeline file (limit 4,000,000)"]
    )
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    f = _write_case(tmp_path, PIPELINE_CASES[0])
    plain = cli("validate", f)
    debug = cli("--debug", "validate", f)
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.output
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError" in debug.stderr
    assert debug.stderr.rstrip().endswith(plain.stderr.rstrip())


# ----------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint files, each wrong in one way, for a teacher ``tiny-vit {dim: 32, depth: 2}``."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    good = build_model("tiny-vit", {"dim": 32, "depth": 2})
    torch.save(good.state_dict(), d / "good.pt")
    (d / "truncated.pt").write_bytes((d / "good.pt").read_bytes()[:700])
    (d / "garbage.pt").write_bytes(b"not a checkpoint\n" * 8)
    (d / "empty.pt").write_bytes(b"")
    torch.save(build_model("tiny-vit", {"dim": 64, "depth": 2}).state_dict(), d / "wrong-arch.pt")
    torch.save(
        build_model("tiny-vit", {"dim": 32, "depth": 2, "num_classes": 5}).state_dict(), d / "classes.pt"
    )
    torch.save(good, d / "whole-module.pt")  # a pickled nn.Module: needs code to load
    torch.save([1, 2, 3], d / "a-list.pt")
    save_model(build_model("tiny-vit", {"dim": 64, "depth": 2}), d / "compress-other-arch.pt")
    torch.save(
        {"format": "compress-model/1", "spec": json.dumps({"family": "resnet-mini", "config": {}, "transforms": []}),
         "state_dict": {}},
        d / "compress-other-family.pt",
    )  # fmt: skip
    return d


CKPT_CASES = [
    (
        "truncated",
        ["{ck}: not a readable torch checkpoint", "re-save it with torch.save(model.state_dict(), path)"],
    ),
    (
        "garbage",
        ["{ck}: not a readable torch checkpoint (corrupt or not written by torch.save: Unsupported operand"],
    ),
    ("empty", ["{ck}: not a readable torch checkpoint"]),
    (
        "wrong-arch",
        [
            "{ck}: checkpoint does not fit the model (shape mismatch: cls_token: file (1, 1, 64) vs model (1, 1, 32)",
            "check the teacher's family, config and num_classes",
        ],
    ),
    (
        "classes",
        [
            "{ck}: checkpoint does not fit the model (shape mismatch: head.weight: file (5, 32) vs model (10, 32)"
        ],
    ),
    (
        "whole-module",
        [
            "{ck}: refused: loading it would import and run Python code (compress.models.tiny_vit.TinyViT)",
            "re-save it with torch.save(model.state_dict(), path)",
        ],
    ),
    ("a-list", ["{ck}: expected a state dict (name -> tensor), got list"]),
    (
        "compress-other-arch",
        [
            "{ck}: the compress model file was saved with another architecture (dim: config 32 vs file 64)",
            "drop these keys from teacher.config",
        ],
    ),
    (
        "compress-other-family",
        [
            "{ck}: a compress model file of family 'resnet-mini', but teacher.family is 'tiny-vit'",
            "set family: resnet-mini or give a 'tiny-vit' checkpoint",
        ],
    ),
]


@pytest.mark.parametrize(("name", "expect"), CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_bad_checkpoint_is_refused_before_the_run_dir_is_made(
    tmp_path: Path, ckpts: Path, name: str, expect: list[str]
) -> None:
    ck = ckpts / f"{name}.pt"
    f = tmp_path / "p.yaml"
    f.write_text(CKPT.replace("CK", str(ck)))
    rd = tmp_path / "run"
    r = cli("run", f, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    assert_one_clean_message(r.stderr, [f"{f}:5: teacher.checkpoint: "] + [_fill(e, ck=ck) for e in expect])
    assert not rd.exists()


def test_bad_checkpoint_leaves_an_existing_run_dir_untouched(tmp_path: Path, ckpts: Path) -> None:
    rd = tmp_path / "run"
    (rd / "stages" / "01-distill").mkdir(parents=True)
    (rd / "manifest.json").write_text('{"from": "an earlier run"}\n')
    (rd / "stages" / "01-distill" / "result.json").write_text("{}\n")
    before = snapshot(rd)
    f = tmp_path / "p.yaml"
    f.write_text(CKPT.replace("CK", str(ckpts / "truncated.pt")))
    r = cli("run", f, "--run-dir", rd)
    assert r.exit_code == 2
    assert snapshot(rd) == before
    assert not (rd / ".lock").exists()


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        ("{dim: 32, depth: 2, num_classes: 5}",
         "teacher.config: the teacher predicts 5 classes but data source 'digits' has 10; set num_classes: 10"),
        ("{dim: 32, depth: 2, image_size: 16}",
         "teacher.config: the teacher cannot run on inputs of data source 'digits' (shape (1, 8, 8))"),
    ],
    ids=["class-count", "input-shape"],
)  # fmt: skip
def test_teacher_that_does_not_fit_the_data_is_refused(tmp_path: Path, config: str, expect: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(_swap("{dim: 32, depth: 2}", config))
    rd = tmp_path / "run"
    r = cli("run", f, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    assert_one_clean_message(r.stderr, [f"{f}:2: {expect}"])
    assert not rd.exists()


# ----------------------------------------------------------------------- ONNX files given to a runtime
# No command loads an arbitrary .onnx file, so these go through the CLI's error handler (`guarded`,
# which every command uses) around the public runtime API: the exit code and message a command shows.

_onnx_app = typer.Typer()


@_onnx_app.command()
def _session(path: Path, feed: str) -> None:
    def go() -> None:
        with open_session("onnxruntime", path, threads=1) as sess:
            x = np.zeros((2, 1, 8, 8), np.float32)
            feeds = {
                "ok": {"input": x},
                "name": {"images": x},
                "shape": {"input": np.zeros((2, 1, 9, 8), np.float32)},
                "rank": {"input": np.zeros((2, 64), np.float32)},
                "dtype": {"input": x.astype(np.float64)},
            }
            sess.run(feeds[feed])

    guarded(go)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compress.export import export_onnx

    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_model("tiny-vit", {"dim": 32, "depth": 1}).eval()
    return export_onnx(model, d / "model.onnx", torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize(
    ("file", "feed", "expect"),
    [
        ("corrupt", "ok", r"runtime 'onnxruntime' cannot load .*corrupt\.onnx: .*(Protobuf|parse|Load model)"),
        ("truncated", "ok", r"runtime 'onnxruntime' cannot load .*truncated\.onnx"),
        ("suffix", "ok", r"runtime 'onnxruntime': .*model\.bin is not an \.onnx file; pass the exported \.onnx path"),
        ("model", "name", r"input names do not match \(missing: \['input'\]; unexpected: \['images'\]; "
                          r"expected: \['input'\]\)"),
        ("model", "shape", r"input 'input' has shape \(2, 1, 9, 8\); axis 2 must be 8 \(expected \(batch, 1, 8, 8\)\)"),
        ("model", "rank", r"input 'input' has shape \(2, 64\) \(rank 2\); expected rank 4"),
        ("model", "dtype", r"input 'input' has dtype float64; expected float32 \(cast with x\.astype\(np\.float32\)\)"),
    ],
    ids=["corrupt", "truncated", "not-onnx-suffix", "wrong-input-name", "wrong-input-size", "wrong-rank", "wrong-dtype"],
)  # fmt: skip
def test_bad_onnx_file_or_feed_is_exit_2(
    tmp_path: Path, onnx_model: Path, file: str, feed: str, expect: str
) -> None:
    paths = {"model": onnx_model, "corrupt": tmp_path / "corrupt.onnx", "truncated": tmp_path / "truncated.onnx",
             "suffix": tmp_path / "model.bin"}  # fmt: skip
    paths["corrupt"].write_bytes(b"\x08\x07garbage that is not a protobuf")
    paths["truncated"].write_bytes(onnx_model.read_bytes()[:300])
    paths["suffix"].write_bytes(onnx_model.read_bytes())
    r = CliRunner().invoke(_onnx_app, [str(paths[file]), feed])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert r.stderr.startswith("error: ")
    assert r.stderr.count("\nerror") == 0
    assert re.search(expect, r.stderr), r.stderr


# ------------------------------------------------------------------------------------ CLI arguments


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["run", "{d}/nope.yaml"], ["Invalid value for 'file'", "nope.yaml' does not exist"]),
        (["validate", "{d}"], ["Invalid value for 'file'", "is a directory"]),
        (["run", "{d}/p.yaml", "--fast"], ["No such option: --fast"]),
        (["report", "{d}/p.yaml"], ["Invalid value for 'run_dir'", "p.yaml' is a file"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
    ],
    ids=["missing-file", "directory-not-file", "unknown-option", "report-on-a-file", "unknown-command"],
)  # fmt: skip
def test_usage_errors_name_the_argument(tmp_path: Path, args: list[str], expect: list[str]) -> None:
    (tmp_path / "p.yaml").write_text(BASE)
    r = cli(*[_fill(a, d=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    flat = " ".join(r.stderr.replace("│", " ").split())  # typer draws usage errors in a box
    for frag in expect:
        assert frag in flat, flat


@pytest.mark.parametrize(
    ("args", "setup", "expect"),
    [
        (["list", "stagez"], None, "error: KIND: got 'stagez' (did you mean 'stages'?); expected one of: stages, families"),
        (["report", "{d}"], None, "error: {d}/manifest.json: no manifest; is {d} a compress run directory?"),
        (["report", "{d}"], "{", "error: {d}/manifest.json: not valid JSON"),
        (["report", "{d}"], "[1, 2]", "error: {d}/manifest.json: not a compress run manifest"),
        (["report", "{d}"], '{"stages": 3}', "error: {d}/manifest.json: not a compress run manifest"),
        (["init", "{d}/exists.yaml"], None, "error: {d}/exists.yaml: already exists; pass --force to overwrite it"),
        (["validate", "{d}/p.yaml", "--deploy-dir", "{d}/nodeploy"], None,
         "error: --deploy-dir {d}/nodeploy: not a folder; pass the folder that holds the target YAMLs"),
    ],
    ids=["list-unknown-kind", "report-not-a-run-dir", "report-bad-json", "report-manifest-a-list",
         "report-manifest-malformed", "init-existing", "deploy-dir-missing"],
)  # fmt: skip
def test_bad_arguments_get_one_message(
    tmp_path: Path, args: list[str], setup: str | None, expect: str
) -> None:
    (tmp_path / "p.yaml").write_text(BASE)
    (tmp_path / "exists.yaml").write_text("name: x\n")
    if setup is not None:
        (tmp_path / "manifest.json").write_text(setup)
    r = cli(*[_fill(a, d=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert_one_clean_message(r.stderr, [_fill(expect, d=tmp_path)])
