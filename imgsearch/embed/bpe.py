"""CLIP's byte-level BPE tokenizer, without torch: the token ids open_clip's `SimpleTokenizer` gives.

The vocabulary is built from the merges file open_clip ships (`bpe_simple_vocab_16e6.txt.gz`):
256 byte symbols, the same with an end-of-word mark, one symbol per merge, then the start and end
tokens. Text is cleaned as open_clip's default ("lower") does: ftfy's fixes, HTML entities
unescaped twice, whitespace runs collapsed, lower case. A text longer than the context is cut, the
end token kept as the last id; shorter rows are padded with 0.
"""

from __future__ import annotations

import gzip
import html
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex

MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
START, END = "<start_of_text>", "<end_of_text>"
END_OF_WORD = "</w>"
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # the merges CLIP's vocabulary was cut at (the file holds more)
# Words: the special tokens, English contractions, letter runs, single digits, other non-space runs.
WORD = regex.compile(
    rf"{START}|{END}|'(?:s|t|re|ve|m|ll|d)|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE,
)
CACHE_LIMIT = 50_000


def byte_symbols() -> list[str]:
    """One printable character per byte value (index = byte), so BPE never sees whitespace or controls.

    Printable Latin-1 bytes stand for themselves; the others borrow characters from U+0100 on, in order.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, borrowed = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + borrowed))
            borrowed += 1
    return symbols


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The merge pairs of a merges file: one "a b" pair a line after a header line (gzipped or not)."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    pieces = text.split("\n", 1)[1].split(maxsplit=2 * N_MERGES)[: 2 * N_MERGES]  # whitespace only between pairs
    return list(zip(pieces[0::2], pieces[1::2], strict=True))


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: fix mojibake, unescape HTML (twice), collapse whitespace, lower case.

    Printable ASCII without "&" is text ftfy leaves as it is (it has no mojibake, controls, ligatures, wide or
    curly characters, and no entity for ftfy to unescape a third time), so ftfy (50 ms to import, a cold query's
    cost) is only imported for other text."""
    if not _plain(text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def _plain(text: str) -> bool:
    return text.isascii() and "&" not in text and text.translate(_BLANKS).isprintable()


_BLANKS = str.maketrans("\t\n\r", "   ")


class ClipTokenizer:
    """Texts to [n, context_length] int64 token ids, as open_clip's SimpleTokenizer("lower") makes them."""

    def __init__(self, merges: Sequence[tuple[str, str]], context_length: int):
        symbols = byte_symbols()
        base = sorted(symbols)  # the vocabulary lists byte symbols by code point
        vocab = [*base, *(s + END_OF_WORD for s in base), *(a + b for a, b in merges), START, END]
        self.ids = {piece: i for i, piece in enumerate(vocab)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_symbol = symbols
        self.context_length = context_length
        self.start_id, self.end_id = self.ids[START], self.ids[END]
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: Path, context_length: int) -> ClipTokenizer:
        """Read a merges file: gzipped as open_clip ships it, or plain as Hugging Face's merges.txt."""
        return cls(read_merges(path), context_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in zip(rows, texts, strict=True):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > self.context_length:
                ids = [*ids[: self.context_length - 1], self.end_id]
            row[: len(ids)] = ids
        return rows

    def encode(self, text: str) -> list[int]:
        """The ids of a text, without the start and end tokens."""
        ids: list[int] = []
        for word in WORD.findall(clean(text)):
            ids.extend(self._word_ids(word))
        return ids

    def _word_ids(self, word: str) -> list[int]:
        if word in (START, END):
            return [self.ids[word]]
        hit = self._cache.get(word)
        if hit is None:
            hit = [self.ids[piece] for piece in self._merge("".join(self.byte_symbol[b] for b in word.encode()))]
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = hit
        return hit

    def _merge(self, word: str) -> list[str]:
        """Apply merges to one word: the lowest-ranked pair present first, at all its places, left to right."""
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            pair = min(itertools.pairwise(parts), key=lambda p: self.ranks.get(p, N_MERGES))
            if pair not in self.ranks:
                break
            parts = _join(parts, pair)
        return parts


def _join(parts: list[str], pair: tuple[str, str]) -> list[str]:
    joined, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            joined.append(parts[i] + parts[i + 1])
            i += 2
        else:
            joined.append(parts[i])
            i += 1
    return joined
