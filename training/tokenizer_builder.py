"""Build a CLIP byte-level BPE tokenizer (vocab.json + merges.txt) from a caption vocabulary.

BPE merges are learned on the word list until every word is one token, so dataset words map to
single tokens while any other text still tokenizes (down to bytes) and round-trips.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END = "</w>"  # CLIP marks the last symbol of each word


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _symbols(word: str, byte_map: dict[int, str]) -> tuple[str, ...]:
    chars = [byte_map[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + END)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent adjacent pair until every word is a single symbol."""
    byte_map = bytes_to_unicode()
    corpus = {w: _symbols(w, byte_map) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in corpus.values():
            pairs.update(zip(symbols, symbols[1:], strict=False))
        if not pairs:
            return merges
        best = max(sorted(pairs), key=lambda p: pairs[p])  # ties: first in sorted order
        merges.append(best)
        for word, symbols in corpus.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[word] = tuple(merged)


def build_tokenizer(words: Iterable[str], folder: Path, max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json + merges.txt for `words` into `folder` and load them as a CLIPTokenizer."""
    merges = learn_merges(words)
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + END for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    return tokenizer
