"""Sources inside a pipeline run: the DataEnv the runner builds, the split and the cache in the run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import compress.data._text as text_mod
from compress._utils.paths import resolve_path
from compress.config import pipeline_model
from compress.config.api import LoadedPipeline
from compress.config.loader import YamlDoc
from tests.unit.data.formats import MINILM, write_fashion, write_jsonl
from tests.unit.reliability.conftest import cli, make_deploy_dir


def _loaded(tmp_path: Path, teacher: dict) -> LoadedPipeline:
    cfg = pipeline_model().model_validate({"name": "t", "teacher": teacher, "stages": [{"finetune": {}}]})
    return LoadedPipeline(
        config=cfg, path=tmp_path / "p.yaml", doc=YamlDoc(file=str(tmp_path / "p.yaml"), data={})
    )


@pytest.mark.parametrize(
    ("teacher", "tokenizer"),
    [
        ({"family": "hf", "config": {"path": MINILM}}, lambda d: resolve_path(MINILM)),
        ({"source": "hf", "path": "models/bert"}, lambda d: d / "models" / "bert"),
        ({"family": "tiny-vit"}, lambda d: None),
    ],
    ids=["hf-pkg", "hf-relative-shorthand", "not-hf"],
)
def test_data_env_points_at_the_yaml_folder_and_the_teachers_tokenizer(
    tmp_path: Path, teacher: dict, tokenizer
) -> None:  # noqa: ANN001
    loaded = _loaded(tmp_path, teacher)
    env = loaded.data_env(cache_dir=tmp_path / "run" / "data" / "cache")
    assert env.base_dir == tmp_path and env.tokenizer_path == tokenizer(tmp_path)
    assert env.cache_dir == tmp_path / "run" / "data" / "cache" and env.hold_cache_writes
    assert loaded.data_env().cache_dir is None and not loaded.data_env().hold_cache_writes


@pytest.mark.slow
def test_fashion_mnist_pipeline_runs_with_a_stored_split(tmp_path: Path) -> None:
    make_deploy_dir(tmp_path)
    write_fashion(tmp_path / "fm", n_train=40, n_test=20)
    f = tmp_path / "p.yaml"
    f.write_text(
        "name: fm\n"
        "teacher: {family: tiny-vit, config: {image_size: 28, patch_size: 7, dim: 16, depth: 1, num_heads: 2}}\n"
        "stages:\n  - finetune: {train: {epochs: 1}}\n"
        "data: {source: fashion-mnist, root: fm, subset: 50, val_fraction: 0.2, test_fraction: 0.2}\n"
    )
    r = cli("run", f, "--run-dir", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    splits = json.loads((tmp_path / "run" / "data" / "splits.json").read_text())
    assert splits["meta"]["n"] == 50 and len(splits["test"]) == len(splits["val"]) == 10
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (
        manifest["inputs"]["data"]["source"] == "fashion-mnist"
        and manifest["inputs"]["splits_sha256"] == splits["sha256"]
    )


TEXT_PIPELINE = """\
name: txt
teacher:
  family: hf
  config:
    hf_config: {model_type: bert, vocab_size: 30522, hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2,
                intermediate_size: 32, max_position_embeddings: 32}
    num_labels: 3
stages:
  - finetune: {train: {epochs: 1}}
data: {source: text, path: d.jsonl, max_length: 12, tokenizer: 'TOK'}
""".replace("TOK", MINILM)


@pytest.mark.slow
def test_text_pipeline_caches_tokens_in_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_deploy_dir(tmp_path)
    names = ["cat", "car", "tree"]
    write_jsonl(
        tmp_path / "d.jsonl",
        [{"text": f"a text about {names[i % 3]} {i}", "label": names[i % 3]} for i in range(30)],
    )
    f = tmp_path / "p.yaml"
    f.write_text(TEXT_PIPELINE)
    rd = tmp_path / "run"
    r = cli("run", f, "--run-dir", rd, "--quiet")
    assert r.exit_code == 0, r.output
    cached = list((rd / "data" / "cache").glob("text-*.pt"))
    assert len(cached) == 1

    def refuse(folder: Path) -> None:
        raise AssertionError("tokenised again although the run dir holds the cache")

    monkeypatch.setattr(text_mod, "load_tokenizer", refuse)
    r = cli("run", f, "--run-dir", rd, "--quiet", "--fresh")
    assert r.exit_code == 0, r.output


def test_split_seed_fixes_the_split_while_the_seed_changes(tmp_path: Path) -> None:
    """``data.split_seed`` keeps one train/val/test split across pipeline seeds (seed-to-seed spread on one
    split); without it the split follows ``seed``."""
    make_deploy_dir(tmp_path)
    body = (
        "name: s\n"
        "teacher: {family: tiny-vit, config: {dim: 16, depth: 1, num_heads: 2, mlp_dim: 32}}\n"
        "stages:\n  - finetune: {train: {epochs: 1}}\n"
    )
    splits = {}
    for tag, seed, data in (
        ("a", 0, "data: {source: digits, subset: 200}\n"),
        ("b", 1, "data: {source: digits, subset: 200}\n"),
        ("c", 1, "data: {source: digits, subset: 200, split_seed: 0}\n"),
    ):
        f = tmp_path / f"{tag}.yaml"
        f.write_text(f"{body}seed: {seed}\n{data}")
        r = cli("run", f, "--run-dir", tmp_path / tag, "--quiet")
        assert r.exit_code == 0, r.output
        splits[tag] = json.loads((tmp_path / tag / "data" / "splits.json").read_text())
        assert splits[tag]["meta"]["seed"] == (0 if tag != "b" else 1)
    assert splits["c"]["test"] == splits["a"]["test"]
    assert splits["b"]["test"] != splits["a"]["test"]
