"""The words a closed-vocabulary tokenizer knows: the shipped model's BPE was learned on its caption
words until each is one token (training/tokenizer_builder.py), so any other word is noise to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Below this many tokens a vocabulary was learned on a word list (the shipped model's has 610);
# CLIP's BPE (49,408) spells any word from pieces it was trained on, so every word is "known".
OPEN_VOCABULARY = 10_000
END_OF_WORD = "</w>"  # CLIP's BPE marks the last symbol of each word


def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2/CLIP's byte-to-printable-unicode map (byte-level BPE tokens)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def known_words(tokenizer: PreTrainedTokenizerBase | None) -> frozenset[str] | None:
    """Every word that is one whole-word token (letters only, lower case); None for an open,
    CLIP-sized vocabulary, a tokenizer other than CLIP's BPE (BERT's WordPiece, say) or none (a
    model without text)."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    if len(vocab) >= OPEN_VOCABULARY or not any(t.endswith(END_OF_WORD) for t in vocab):
        return None
    decoder = byte_decoder()
    found = set()
    for token in vocab:
        if not token.endswith(END_OF_WORD):
            continue
        try:
            word = bytes(decoder[char] for char in token.removesuffix(END_OF_WORD)).decode()
        except (KeyError, UnicodeDecodeError):
            continue
        if word.isalpha():
            found.add(word.lower())
    return frozenset(found)
