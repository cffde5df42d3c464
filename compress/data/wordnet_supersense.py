"""``wordnet-supersense``: WordNet synsets labelled with their supersense (lexicographer file).

Reads ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` of WordNet 3.0 (Debian's
``wordnet-base``, ``/usr/share/wordnet``; format in ``man 5 wndb``). One example per synset:

- text: the synset's lemmas (underscores to spaces, joined with ", "), then ": " and the gloss,
  e.g. ``breathe, take a breath, respire, suspire: draw air into, and expel out of, the lungs; ...``
- label: the lexicographer file number, 0..44 (45 supersenses such as ``noun.animal`` or
  ``verb.motion``; names from ``man 5 lexnames``).

117,659 synsets on the WordNet 3.0 files, with very skewed classes (``adj.all`` has 14,435,
``noun.motive`` 42). A data line is
``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames...] | gloss``
with ``w_cnt`` in hexadecimal; the licence at the top of each file is indented by two spaces.
Adjectives may carry a syntactic marker on the word (``galore(ip)``), which is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compress.data._common import require_folder, resolve
from compress.data._text import ParsedText, TextDataConfig, text_task, tokenizer_folder
from compress.data.base import DataEnv, DataSourceError, TaskData, register_source

DEFAULT_ROOT = "/usr/share/wordnet"
INSTALL = "apt-get install wordnet-base"
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]  # fmt: skip
"""The 45 lexicographer files by number (``man 5 lexnames``): the supersense class names."""

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_SS_TYPES = {"n", "v", "a", "s", "r"}


class WordnetSupersenseDataConfig(TextDataConfig):
    """WordNet 3.0 synsets (Debian package ``wordnet-base``), labelled by supersense, tokenised."""

    source: Literal["wordnet-supersense"] = Field(
        "wordnet-supersense", description="Registered data source (see `compress list sources`)."
    )
    root: str = Field(
        DEFAULT_ROOT,
        description="Folder with WordNet's data.noun, data.verb, data.adj, data.adv (or pkg:...).",
    )


def parse_line(line: str, *, path: Path, lineno: int) -> tuple[str, int]:
    """One synset line to ``(text, label)``.

    Raises:
        DataSourceError: The line does not follow the data-file format (names file and line).
    """
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    try:
        if len(fields) < 6 or fields[2] not in _SS_TYPES:
            raise ValueError("expected 'offset lex_filenum ss_type w_cnt word lex_id ...'")
        label = int(fields[1], 10)
        if not 0 <= label < len(LEXNAMES):
            raise ValueError(f"lex_filenum {fields[1]}, expected 00..{len(LEXNAMES) - 1}")
        count = int(fields[3], 16)
        if count < 1 or len(fields) < 4 + 2 * count:
            raise ValueError(f"w_cnt {fields[3]} (hex) announces {count} words, the line has fewer")
    except ValueError as e:
        shown = line.strip()[:60]
        raise DataSourceError(
            f"{path}:{lineno}: not a WordNet data line ({e}): {shown!r}; reinstall the files "
            f"(`{INSTALL}`) or point data.root at an unmodified WordNet 3.0 dict folder",
            key="root",
        ) from None
    words = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]
    gloss = gloss.strip() if sep else ""
    lemmas = ", ".join(words)
    return (f"{lemmas}: {gloss}" if gloss else lemmas), label


def read_wordnet(root: Path) -> ParsedText:
    """Every synset of the four data files under ``root`` (no tokenising).

    Returns:
        Texts and labels in file order (noun, verb, adj, adv), the 45 class names.

    Raises:
        DataSourceError: A file is missing (naming the apt package) or a line is malformed.
    """
    require_folder(root, key="root", files=list(POS_FILES), install=INSTALL)
    texts: list[str] = []
    labels: list[int] = []
    for name in POS_FILES:
        path = root / name
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                text, label = parse_line(line, path=path, lineno=lineno)
                texts.append(text)
                labels.append(label)
    if not texts:
        raise DataSourceError(
            f"{root}: the WordNet data files hold no synsets; reinstall them (`{INSTALL}`)", key="root"
        )
    return ParsedText(
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        classes=list(LEXNAMES),
        notes={
            "text": "lemmas (', '-joined, '_' -> ' ') + ': ' + gloss",
            "files": [str(root / n) for n in POS_FILES],
        },
    )


def check_wordnet(cfg: WordnetSupersenseDataConfig, env: DataEnv) -> None:
    """The four data files exist and parse, and the tokenizer folder is usable (tokenises nothing)."""
    root = resolve(cfg.root, env, key="root")
    require_folder(root, key="root", files=list(POS_FILES), install=INSTALL)
    tokenizer_folder(cfg, env)
    read_wordnet(root)


@register_source("wordnet-supersense", WordnetSupersenseDataConfig, check=check_wordnet)
def load_wordnet_supersense(cfg: WordnetSupersenseDataConfig, env: DataEnv) -> TaskData:
    """WordNet 3.0 synsets (lemmas + gloss) labelled by their 45 supersenses, tokenised.

    Args:
        cfg: ``root``, ``tokenizer``, ``max_length``.
        env: Where relative paths start, the cache folder, the teacher's tokenizer folder.

    Returns:
        (N, max_length) int64 token ids and 45-class labels; from the cache when nothing changed.

    Raises:
        DataSourceError: Missing files (naming ``apt-get install wordnet-base``), a malformed line,
            or an unusable tokenizer.
    """
    root = resolve(cfg.root, env, key="root")
    require_folder(root, key="root", files=list(POS_FILES), install=INSTALL)
    return text_task(cfg, env, files=[root / n for n in POS_FILES], parse=lambda: read_wordnet(root))
