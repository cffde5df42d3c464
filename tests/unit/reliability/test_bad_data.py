"""Bad data inputs through the CLI: each is exit 2 with one message naming the pipeline line, the
``data:`` key and the data file (and its line), with the fix; no traceback; no run directory.

``compress validate`` runs each source's cheap checks (files exist, IDX headers and lengths,
WordNet and JSONL/CSV records parse, class folders hold images, the factory imports); decoding
every image and calling the factory happen only in ``compress run``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.unit.data.formats import (
    MINILM,
    WORDNET_LINES,
    idx_bytes,
    write_fashion,
    write_jsonl,
    write_png_folder,
    write_wordnet,
)
from tests.unit.reliability.conftest import cli, make_deploy_dir

BASE = """\
name: t
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
stages:
  - finetune: {train: {epochs: 1}}
"""


@dataclass
class DataCase:
    """A ``data:`` mapping (line 5 of the pipeline), files it needs, and what stderr must say.

    ``expect`` fragments may use ``{f}`` for the pipeline file and ``{d}`` for its folder.
    """

    id: str
    data: str
    expect: list[str]
    setup: Callable[[Path], object] = field(default=lambda d: None, repr=False)
    validate: bool = True


def _fashion(change: Callable[[Path], object]) -> Callable[[Path], object]:
    def setup(d: Path) -> None:
        write_fashion(d / "fm")
        change(d / "fm")

    return setup


def _replace(name: str, make: Callable[[bytes], bytes]) -> Callable[[Path], object]:
    return lambda root: (root / name).write_bytes(make((root / name).read_bytes()))


TOK = f"tokenizer: '{MINILM}'"

CASES = [
    DataCase(
        "fashion-package-missing",
        "{source: fashion-mnist, root: empty}",
        [
            "{f}:5: data.root: {d}/empty/train-images-idx3-ubyte.gz: not found (4 of 4 expected files missing",
            "install it with `apt-get install dataset-fashion-mnist` or set data.root",
        ],
        setup=lambda d: (d / "empty").mkdir(),
    ),
    DataCase(
        "fashion-root-missing",
        "{source: fashion-mnist, root: nowhere}",
        [
            "{f}:5: data.root: {d}/nowhere: not found; expected a folder with",
            "apt-get install dataset-fashion-mnist",
        ],
    ),
    DataCase(
        "fashion-truncated-gzip",
        "{source: fashion-mnist, root: fm}",
        [
            "{f}:5: data.root: {d}/fm/train-images-idx3-ubyte.gz: cannot decompress it (EOFError",
            "the file is truncated or corrupt: reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)",
        ],
        setup=_fashion(_replace("train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2])),
    ),
    DataCase(
        "fashion-wrong-magic",
        "{source: fashion-mnist, root: fm}",
        [
            "{f}:5: data.root: {d}/fm/t10k-labels-idx1-ubyte.gz: IDX magic number 0x00000803, expected 0x00000801"
        ],
        setup=_fashion(
            _replace("t10k-labels-idx1-ubyte.gz", lambda b: gzip.compress(idx_bytes(np.zeros((1, 28, 28)))))
        ),
    ),
    DataCase(
        "fashion-count-mismatch",
        "{source: fashion-mnist, root: fm}",
        [
            "{f}:5: data.root: {d}/fm/train-labels-idx1-ubyte.gz: 5 labels for the 30 images of train-images-idx3-ubyte.gz"
        ],
        setup=_fashion(
            _replace("train-labels-idx1-ubyte.gz", lambda b: gzip.compress(idx_bytes(np.zeros(5))))
        ),
    ),
    DataCase(
        "wordnet-package-missing",
        f"{{source: wordnet-supersense, root: empty, {TOK}}}",
        [
            "{f}:5: data.root: {d}/empty/data.noun: not found",
            "install it with `apt-get install wordnet-base`",
        ],
        setup=lambda d: (d / "empty").mkdir(),
    ),
    DataCase(
        "wordnet-malformed-line",
        f"{{source: wordnet-supersense, root: wn, {TOK}}}",
        ["{f}:5: data.root: {d}/wn/data.adv:5: not a WordNet data line (lex_filenum 77, expected 00..44)"],
        setup=lambda d: write_wordnet(
            d / "wn",
            {**WORDNET_LINES, "data.adv": [*WORDNET_LINES["data.adv"], "00010914 77 r 01 only 4 000 | x"]},
        ),
    ),
    DataCase(
        "tokenizer-teacher-not-hf",
        "{source: wordnet-supersense, root: wn}",
        [
            "{f}:5: data.tokenizer: teacher, but the teacher is not a Hugging Face model; set tokenizer: <path or pkg:...>"
        ],
        setup=lambda d: write_wordnet(d / "wn"),
    ),
    DataCase(
        "tokenizer-folder-missing",
        "{source: text, path: d.jsonl, tokenizer: tok}",
        [
            "{f}:5: data.tokenizer: {d}/tok: not found; set tokenizer: to a Hugging Face model or tokenizer folder"
        ],
        setup=lambda d: write_jsonl(d / "d.jsonl", [{"text": "a", "label": 0}]),
    ),
    DataCase(
        "jsonl-empty",
        f"{{source: text, path: d.jsonl, {TOK}}}",
        ["{f}:5: data.path: {d}/d.jsonl: no records; expected at least one labelled text"],
        setup=lambda d: (d / "d.jsonl").write_text(""),
    ),
    DataCase(
        "jsonl-malformed-line",
        f"{{source: text, path: d.jsonl, {TOK}}}",
        ["{f}:5: data.path: {d}/d.jsonl:2: not valid JSON (Expecting ':' delimiter at column 9)"],
        setup=lambda d: (d / "d.jsonl").write_text('{"text": "a", "label": 0}\n{"text" "b"}\n'),
    ),
    DataCase(
        "jsonl-unknown-label",
        f"{{source: text, path: d.jsonl, classes: [pos, neg], {TOK}}}",
        ["{f}:5: data.path: {d}/d.jsonl:2: unknown label 'neutral'; expected one of data.classes (pos, neg)"],
        setup=lambda d: write_jsonl(
            d / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neutral"}]
        ),
    ),
    DataCase(
        "csv-missing-column",
        f"{{source: text, path: d.csv, label_field: topic, {TOK}}}",
        [
            "{f}:5: data.path: {d}/d.csv:1: no column 'topic' in the header (columns: text, label); set data.label_field"
        ],
        setup=lambda d: (d / "d.csv").write_text("text,label\na,0\n"),
    ),
    DataCase(
        "text-file-missing",
        f"{{source: text, path: [a.jsonl, b.jsonl], {TOK}}}",
        ["{f}:5: data.path: {d}/b.jsonl: not found; fix data.path (relative to the YAML)"],
        setup=lambda d: write_jsonl(d / "a.jsonl", [{"text": "a", "label": 0}]),
    ),
    DataCase(
        "image-empty-class",
        "{source: image-folder, root: img}",
        ["{f}:5: data.root: {d}/img/zebra: empty class folder (no .png, .jpg, .jpeg files)"],
        setup=lambda d: (write_png_folder(d / "img", {"cat": 2}), (d / "img" / "zebra").mkdir()),
    ),
    DataCase(
        "image-unreadable",
        "{source: image-folder, root: img}",
        [
            "{f}:5: data.root: {d}/img/cat/9.png: cannot read the image (UnidentifiedImageError",
            "replace or remove the file",
        ],
        setup=lambda d: (
            write_png_folder(d / "img", {"cat": 2, "dog": 2}),
            (d / "img" / "cat" / "9.png").write_bytes(b"GIF?"),
        ),
        validate=False,
    ),
    DataCase(
        "factory-import-error",
        "{source: factory, factory: 'no_such_pkg.data:make'}",
        [
            "{f}:5: data.factory: factory 'no_such_pkg.data:make': cannot import module 'no_such_pkg.data' "
            "(ModuleNotFoundError: No module named 'no_such_pkg'); check the name and PYTHONPATH"
        ],
    ),
    DataCase(
        "factory-raises",
        "{source: factory, factory: 'tests.unit.data.formats:make_error'}",
        [
            "{f}:5: data.factory: factory 'tests.unit.data.formats:make_error' raised RuntimeError: disk on fire"
        ],
        validate=False,
    ),
]


def _write(tmp_path: Path, case: DataCase) -> Path:
    make_deploy_dir(tmp_path)
    case.setup(tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text(BASE + f"data: {case.data}\n")
    return f


def _assert_clean(stderr: str, expect: list[str]) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    for frag in expect:
        assert frag in stderr, f"{frag!r} not in:\n{stderr}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_data_refused_by_run_before_any_write(tmp_path: Path, case: DataCase) -> None:
    f = _write(tmp_path, case)
    rd = tmp_path / "run"
    r = cli("run", f, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    _assert_clean(r.stderr, [e.replace("{f}", str(f)).replace("{d}", str(tmp_path)) for e in case.expect])
    assert not rd.exists() and r.stdout == ""


@pytest.mark.parametrize("case", [c for c in CASES if c.validate], ids=lambda c: c.id)
def test_validate_gives_the_same_message(tmp_path: Path, case: DataCase) -> None:
    f = _write(tmp_path, case)
    r = cli("validate", f)
    assert r.exit_code == 2, r.output
    _assert_clean(r.stderr, [e.replace("{f}", str(f)).replace("{d}", str(tmp_path)) for e in case.expect])


def test_tokenised_data_is_not_written_when_the_teacher_is_refused(tmp_path: Path) -> None:
    """The data loads (and would be cached), then the image teacher cannot read token ids: no run dir."""
    make_deploy_dir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [{"text": f"text {i}", "label": i % 2} for i in range(8)])
    f = tmp_path / "p.yaml"
    f.write_text(BASE + f"data: {{source: text, path: d.jsonl, max_length: 8, {TOK}}}\n")
    rd = tmp_path / "run"
    r = cli("run", f, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    _assert_clean(
        r.stderr, [f"{f}:2: teacher.config: the teacher cannot run on inputs of data source 'text'"]
    )
    assert not rd.exists()
