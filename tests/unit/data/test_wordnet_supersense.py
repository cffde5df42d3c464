"""WordNet supersenses from data files in the real format: parsing, labels, tokens, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress._utils.paths import resolve_path
from compress.data import SOURCES, DataEnv, DataSourceError
from compress.data.wordnet_supersense import (
    DEFAULT_ROOT,
    LEXNAMES,
    POS_FILES,
    WordnetSupersenseDataConfig,
    read_wordnet,
)
from tests.unit.data.formats import MINILM, WORDNET_LINES, write_wordnet

SRC = SOURCES.get("wordnet-supersense")


def test_lexnames_table() -> None:
    assert len(LEXNAMES) == 45
    assert LEXNAMES[:4] == ["adj.all", "adj.pert", "adv.all", "noun.Tops"]
    assert LEXNAMES[29] == "verb.body" and LEXNAMES[43] == "verb.weather" and LEXNAMES[44] == "adj.ppl"


def test_one_example_per_synset_with_lemmas_and_gloss(tmp_path: Path) -> None:
    parsed = read_wordnet(write_wordnet(tmp_path / "wn"))
    assert len(parsed.texts) == sum(len(v) for v in WORDNET_LINES.values()) == 8
    assert parsed.texts[0] == (
        "entity: that which is perceived or known or inferred to have its own distinct existence (living or nonliving)"
    )
    # w_cnt is hexadecimal (0c = 12 lemmas); underscores become spaces
    assert parsed.texts[2] == (
        "acid, back breaker, battery-acid, dose, dot, Elvis, loony toons, Lucy in the sky with diamonds, pane, "
        "superman, window pane, Zen: street name for lysergic acid diethylamide"
    )
    # the adjective marker (p) is dropped
    assert parsed.texts[6] == 'handy, ready to hand: easy to reach; "found a handy spot for the can opener"'
    assert parsed.labels.tolist() == [3, 4, 6, 29, 30, 0, 0, 2]
    assert parsed.classes == LEXNAMES


def test_tokenised_with_the_teacher_tokenizer(tmp_path: Path) -> None:
    write_wordnet(tmp_path / "wn")
    env = DataEnv(base_dir=tmp_path, tokenizer_path=resolve_path(MINILM))
    d = SRC(WordnetSupersenseDataConfig(root="wn", max_length=16), env)
    assert d.inputs.shape == (8, 16) and d.inputs.dtype == torch.long
    assert d.num_classes == 45 and d.labels.tolist()[:3] == [3, 4, 6]
    assert d.preprocess["input"] == "token_ids" and d.preprocess["pad_token_id"] == 0
    assert d.preprocess["max_length"] == 16 and d.preprocess["classes"] == LEXNAMES
    assert d.inputs[:, 0].eq(101).all()  # [CLS]
    assert (d.inputs[1] == 0).any() and not (d.inputs[2] == 0).any()  # padded / truncated


def test_missing_files_name_the_apt_package(tmp_path: Path) -> None:
    (tmp_path / "wn").mkdir()
    cfg = WordnetSupersenseDataConfig(root=str(tmp_path / "wn"), tokenizer=MINILM)
    for fn in (lambda: SRC(cfg, DataEnv(tmp_path)), lambda: SRC.preflight(cfg, DataEnv(tmp_path))):
        with pytest.raises(DataSourceError) as ei:
            fn()
        assert str(ei.value).startswith(
            f"data.root: {tmp_path / 'wn' / 'data.noun'}: not found (4 of 4 expected"
        )
        assert "apt-get install wordnet-base" in str(ei.value)


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("00001740 03 n 01 entity", "expected 'offset lex_filenum ss_type w_cnt word lex_id ...'"),
        ("00001740 45 n 01 entity 0 000 | gloss", "lex_filenum 45, expected 00..44"),
        ("00001740 03 n 03 entity 0 thing 0 | gloss", "w_cnt 03 (hex) announces 3 words"),
        ("00001740 03 n zz entity 0 000 | gloss", "invalid literal for int() with base 16"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, expect: str) -> None:
    lines = dict(WORDNET_LINES)
    lines["data.verb"] = [*WORDNET_LINES["data.verb"], line]
    root = write_wordnet(tmp_path / "wn", lines)
    with pytest.raises(DataSourceError) as ei:
        read_wordnet(root)
    # three licence lines, two synsets, then the bad one
    assert str(ei.value).startswith(f"data.root: {root / 'data.verb'}:6: not a WordNet data line (")
    assert expect in str(ei.value)


def test_tokenizer_teacher_needs_an_hf_teacher(tmp_path: Path) -> None:
    write_wordnet(tmp_path / "wn")
    with pytest.raises(DataSourceError) as ei:
        SRC(WordnetSupersenseDataConfig(root="wn"), DataEnv(base_dir=tmp_path))
    assert str(ei.value) == (
        "data.tokenizer: teacher, but the teacher is not a Hugging Face model; set tokenizer: <path or pkg:...>"
    )


def test_tokenizer_folder_without_tokenizer_files(tmp_path: Path) -> None:
    write_wordnet(tmp_path / "wn")
    (tmp_path / "tok").mkdir()
    with pytest.raises(DataSourceError, match=r"^data.tokenizer: .*tok: not a tokenizer folder"):
        SRC(WordnetSupersenseDataConfig(root="wn", tokenizer="tok"), DataEnv(base_dir=tmp_path))


@pytest.mark.skipif(
    not all((Path(DEFAULT_ROOT) / f).is_file() for f in POS_FILES), reason="wordnet-base is not installed"
)
def test_installed_wordnet_has_117659_synsets_in_45_classes() -> None:
    parsed = read_wordnet(Path(DEFAULT_ROOT))
    assert len(parsed.texts) == 117_659
    assert len(np.unique(parsed.labels)) == 45
