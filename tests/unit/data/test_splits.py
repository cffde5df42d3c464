"""Seeded stratified splits stored with their hash; same seed, same split."""

from __future__ import annotations

import json

import numpy as np

from compress.data import SOURCES, load_or_make_splits, stratified_split


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), 40)
    a = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=3)
    c = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    allidx = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(allidx) == 200 and len(set(allidx.tolist())) == 200
    assert np.bincount(labels[a["test"]]).tolist() == [8] * 5


def test_stored_split_reused_and_hash_checked(tmp_path):
    d = SOURCES.get("digits")()
    p = tmp_path / "splits.json"
    h1 = load_or_make_splits(d, p, val_fraction=0.15, test_fraction=0.15, seed=0)
    stored = json.loads(p.read_text())
    assert stored["sha256"] == h1 and len(stored["test"]) == d.split_size("test")
    # a tampered file is detected by its hash and replaced by the seeded split
    stored["test"][0] = stored["train"][0]
    p.write_text(json.dumps(stored))
    h2 = load_or_make_splits(d, p, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert h2 == h1 and json.loads(p.read_text())["test"] != stored["test"]
