"""``data:`` in a pipeline file: one union over the registered sources, picked by ``source``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compress.config import dump_config, load_config, pipeline_model
from compress.data.digits import DigitsDataConfig
from compress.data.text import TextFileDataConfig
from compress.errors import ConfigError
from tests.unit.data.formats import MINILM, write_fashion, write_jsonl

BASE = """\
name: t
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
stages:
  - finetune: {train: {epochs: 1}}
"""


def write(tmp_path: Path, data: str | None) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(BASE + (f"data: {data}\n" if data is not None else ""))
    return p


@pytest.mark.parametrize("data", [None, "{}", "{source: digits}", "{batch_size: 32}"])
def test_digits_is_the_default(tmp_path: Path, data: str | None) -> None:
    cfg = load_config(write(tmp_path, data)).config
    assert type(cfg.data) is DigitsDataConfig and cfg.data.source == "digits"


def test_each_source_gets_its_own_keys_and_round_trips(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    loaded = load_config(
        write(tmp_path, f"{{source: text, path: d.jsonl, tokenizer: '{MINILM}', subset: 2}}")
    )
    d = loaded.config.data
    assert type(d) is TextFileDataConfig and d.path == ["d.jsonl"] and d.max_length == 64 and d.subset == 2
    assert pipeline_model().model_validate(dump_config(loaded.config)) == loaded.config


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("{source: mnistt}", r"p.yaml:5: data.source: got 'mnistt'; expected: unknown data source 'mnistt' \(did you mean 'fashion-mnist'\?\); valid: digits, factory, "),
        ("{source: fashion-mnst}", r"unknown data source 'fashion-mnst' \(did you mean 'fashion-mnist'\?\)"),
        ("{source: text, path: a.jsonl, txt_field: s}", r"p.yaml:5: data.txt_field: unknown key 'txt_field' \(did you mean 'text_field'\?\); valid keys here: batch_size, classes, delimiter"),
        ("{source: text}", r"p.yaml:5: data.path: required key is missing \(JSONL or CSV file\(s\)"),
        ("{source: fashion-mnist, max_length: 3}", r"data.max_length: unknown key 'max_length'; valid keys here: batch_size, eval_batch_size, root, source"),
        ("{source: wordnet-supersense, max_length: 1}", r"data.max_length: got 1; expected: Input should be greater than or equal to 2"),
        ("{source: image-folder, root: x, channels: 2}", r"data.channels: got 2; expected: Input should be 1 or 3"),
        ("{source: factory, factory: 'os.system'}", r"data.factory: got 'os.system'; expected: 'os.system' is not 'package.module:function'"),
        ("{subset: 0}", r"data.subset: got 0; expected: Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_data_errors_are_located(tmp_path: Path, data: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, data))
    assert re.search(expected, str(ei.value)), str(ei.value)
    assert len(ei.value.problems) == 1


def test_validate_runs_the_source_checks(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fm")
    load_config(write(tmp_path, "{source: fashion-mnist, root: fm}"))
    (tmp_path / "fm" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "{source: fashion-mnist, root: fm}"))
    assert str(ei.value).startswith(
        f"{tmp_path / 'p.yaml'}:5: data.root: {tmp_path / 'fm' / 'train-images-idx3-ubyte.gz'}: "
    )


def test_schema_lists_every_source_and_its_fields() -> None:
    schema = pipeline_model().model_json_schema()
    refs = [r["$ref"].rsplit("/", 1)[1] for r in schema["properties"]["data"]["oneOf"]]
    assert "FashionMnistDataConfig" in refs and "WordnetSupersenseDataConfig" in refs
    assert not any("Unknown" in r for r in refs)
    wn = schema["$defs"]["WordnetSupersenseDataConfig"]["properties"]
    assert {"root", "tokenizer", "max_length", "subset"} <= set(wn)
    assert json.dumps(schema)  # serialisable
