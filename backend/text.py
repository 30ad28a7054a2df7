"""Sentence classification data: the vendored UCI Sentiment Labelled Sentences and user TSV/CSV files, and a tokenizer
built from the training data (word or character level; no download).

Each vendored line is ``sentence<TAB>label``; sentences may contain quotes, so lines are split on the last tab and
never read with CSV quoting. A user's file is TSV (split on the last tab) or CSV (two columns, standard quoting).
The train/validation split is fixed: the last 20 % of a permutation drawn with seed 0.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.allowed import data_path
from backend.errors import ConfigError

DATA_DIR = Path(__file__).parent / "data" / "sentiment"
SOURCES = {"yelp": "yelp_labelled.txt", "amazon": "amazon_cells_labelled.txt", "imdb": "imdb_labelled.txt"}
PAD, UNK = 0, 1
MAX_FILE_BYTES = 5 * 1024 * 1024
WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


@dataclass(frozen=True)
class TextData:
    train_text: list[str]
    y_train: np.ndarray
    val_text: list[str]
    y_val: np.ndarray
    name: str


def parse_lines(text: str, name: str, fmt: str = "tsv") -> tuple[list[str], list[int]]:
    """(sentences, labels) from TSV (``sentence<TAB>label``, split on the last tab) or CSV (text,label)."""
    if len(text.encode("utf-8", errors="replace")) > MAX_FILE_BYTES:
        raise ConfigError("corpus", f"{name} is larger than {MAX_FILE_BYTES // 2**20} MiB")
    sentences, labels = [], []
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        lines = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
        if lines and lines[0][1][-1].strip().lower() in ("label", "sentiment", "y", "class"):
            lines = lines[1:]
        for no, row in lines:
            if len(row) != 2:
                raise ConfigError("corpus", f"{name} line {no}: expected 2 columns (text, label), got {len(row)}")
            sentences.append(row[0])
            labels.append(_label(row[1], name, no))
    else:
        for no, line in enumerate(text.split("\n"), start=1):  # not splitlines(): sentences hold U+0085
            line = line.rstrip("\r")
            if not line.strip():
                continue
            sentence, tab, label = line.rpartition("\t")
            if not tab:
                raise ConfigError("corpus", f"{name} line {no}: no tab between the sentence and its label")
            sentences.append(sentence)
            labels.append(_label(label, name, no))
    if len(sentences) < 4:
        raise ConfigError("corpus", f"{name}: need at least 4 labelled sentences, found {len(sentences)}")
    if len(set(labels)) < 2:
        raise ConfigError("corpus", f"{name}: the labels hold a single class")
    return sentences, labels


def _label(text: str, name: str, no: int) -> int:
    t = text.strip()
    if t not in ("0", "1"):
        raise ConfigError("corpus", f"{name} line {no}: the label must be 0 or 1, got {t!r}")
    return int(t)


def _split(sentences: list[str], labels: list[int], name: str) -> TextData:
    perm = np.random.default_rng(0).permutation(len(sentences))
    n_val = max(1, int(round(0.2 * len(sentences))))
    tr, va = perm[n_val:], perm[:n_val]
    y = np.asarray(labels, dtype=np.int64)
    return TextData([sentences[i] for i in tr], y[tr], [sentences[i] for i in va], y[va], name)


def load_corpus(spec: dict) -> TextData:
    """``{"name": "yelp" | "amazon" | "imdb" | "all"}`` or ``{"name": "file", "path": …, "format": "tsv"|"csv"}``."""
    name = spec.get("name", "yelp")
    if name in SOURCES or name == "all":
        sentences, labels = [], []
        for src in (SOURCES if name == "all" else {name: SOURCES[name]}).values():
            s, y = parse_lines((DATA_DIR / src).read_text(encoding="utf-8"), src)
            sentences += s
            labels += y
        return _split(sentences, labels, name)
    if name == "file":
        path = data_path(spec.get("path", ""), "corpus.path")  # confined where it is read (backend/allowed.py)
        if not path.is_file():
            raise ConfigError("corpus.path", f"{path} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError("corpus.path", f"{path.name} is not UTF-8 text") from None
        s, y = parse_lines(text, path.name, spec.get("format", "tsv"))
        return _split(s, y, path.name)
    raise ConfigError("corpus.name", f"expected 'yelp', 'amazon', 'imdb', 'all' or 'file', got {name!r}")


def tokens(sentence: str, level: str) -> list[str]:
    s = sentence.lower()
    return list(s) if level == "char" else WORD.findall(s)


@dataclass(frozen=True)
class Tokenizer:
    """Vocabulary from the training sentences (most frequent first, ties alphabetically); 0 = <pad>, 1 = <unk>."""

    level: str
    vocab: dict[str, int]
    max_len: int

    @classmethod
    def build(cls, sentences: list[str], level: str, max_len: int, max_vocab: int) -> "Tokenizer":
        counts = Counter(t for s in sentences for t in tokens(s, level))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, max_vocab - 2)]
        return cls(level, {w: i + 2 for i, w in enumerate(ranked)}, max_len)

    @property
    def size(self) -> int:
        return len(self.vocab) + 2

    def encode(self, sentences: list[str]) -> np.ndarray:
        """(n, max_len) int64 ids: truncated, padded with 0 on the right; an empty sentence keeps one <unk>."""
        out = np.zeros((len(sentences), self.max_len), dtype=np.int64)
        for i, s in enumerate(sentences):
            ids = [self.vocab.get(t, UNK) for t in tokens(s, self.level)][: self.max_len] or [UNK]
            out[i, : len(ids)] = ids
        return out
