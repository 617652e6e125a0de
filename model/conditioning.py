"""Text conditioning tau_theta(y): a CLIP text encoder over 77-token windows (LDM, Sec. 3.3).

Prompts longer than one window are encoded in 75-token chunks, each wrapped in BOS/EOS and padded to
77, and the chunk embeddings are concatenated along the sequence (the A1111 convention).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from transformers import CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)

WINDOW = 77  # CLIP's context length: BOS + 75 tokens + EOS


def windows(tokenizer: CLIPTokenizer, ids: list[int]) -> list[list[int]]:
    """Token ids (no special tokens) as BOS/EOS-wrapped, padded 77-token windows (at least one)."""
    body = WINDOW - 2
    pieces = [ids[i : i + body] for i in range(0, len(ids), body)] or [[]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos, *piece, eos] + [pad] * (body - len(piece)) for piece in pieces]


class TextConditioner:
    """Encodes prompts to cross-attention context, with an LRU cache of embeddings."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        encoder: CLIPTextModel,
        clip_skip: int = 1,
        cache_size: int = 256,
    ) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.clip_skip = clip_skip  # A1111 convention: 1 = last layer, 2 = penultimate, ...
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()

    @property
    def context_dim(self) -> int:
        return self.encoder.config.hidden_size

    def chunks(self, prompt: str) -> list[list[int]]:
        """Token ids of a prompt as BOS/EOS-wrapped, padded 77-token windows."""
        ids = self.tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
        chunks = windows(self.tokenizer, ids)
        if len(chunks) > 1:
            log.warning("prompt has %d tokens: encoding %d chunks of 75", len(ids), len(chunks))
        return chunks

    def token_count(self, prompt: str) -> int:
        """Tokens the encoder reads for a prompt, BOS/EOS of every window included, no padding."""
        ids = self.tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
        return len(ids) + 2 * max(1, -(-len(ids) // (WINDOW - 2)))

    @torch.no_grad()
    def _encode_chunk(self, ids: list[int]) -> torch.Tensor:
        device = self.encoder.device
        input_ids = torch.tensor([ids], device=device)  # (1, 77)
        if self.clip_skip <= 1:
            return self.encoder(input_ids).last_hidden_state  # (1, 77, D)
        out = self.encoder(input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-self.clip_skip]
        text_model = getattr(self.encoder, "text_model", self.encoder)  # transformers 5 is flat
        return text_model.final_layer_norm(hidden)

    def encode(self, prompt: str, min_chunks: int = 1) -> torch.Tensor:
        """Context (1, 77 * n_chunks, D) for one prompt, padded with empty chunks to min_chunks."""
        key = (prompt, min_chunks)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        windows = self.chunks(prompt)
        windows += [self.chunks("")[0]] * (min_chunks - len(windows))
        context = torch.cat([self._encode_chunk(w) for w in windows], dim=1)
        self._cache[key] = context
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return context

    def encode_pair(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) contexts with the same number of chunks."""
        n = max(len(self.chunks(prompt)), len(self.chunks(negative_prompt)))
        return self.encode(prompt, n), self.encode(negative_prompt, n)


class NoConditioner:
    """The conditioner of models that read no text (the paper's unconditional and super-resolution
    models): every prompt is the empty context (1, 0, 0), which the UNet never reads."""

    context_dim = 0

    def __init__(self, device: torch.device) -> None:
        self.empty = torch.zeros(1, 0, 0, device=device)  # (1, 0, 0)

    def token_count(self, prompt: str) -> int:
        return 0

    def encode(self, prompt: str, min_chunks: int = 1) -> torch.Tensor:
        return self.empty

    def encode_pair(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.empty, self.empty
