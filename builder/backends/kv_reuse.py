"""Key/value cache reuse for the hf backend: what one forward pass computed, the next one does not compute again.

Two kinds of reuse, both exact in what they compute (the same attention over the same tokens), differing from a
full prefill only in floating-point rounding (other matrix shapes, other summation orders):

- A shared prefix. Every judgment starts with the same chat header and rubric (about 300 tokens of a 450-token
  judge prompt on the embedded model). `PrefixCache` prefills that prefix once at batch size 1 and hands each batch
  a view of it expanded to the batch; the rows' own tokens follow after a gap of padding that the attention mask
  hides, with position ids that skip the gap. This is what vLLM calls automatic prefix caching, for one prefix.
- The rows of the last generation. In `auto` mode a reply without a parsable score is scored again in forced mode:
  the same prompt and justification, then "Score:". `RowCache` keeps the cache of the batches of the last
  `generate` call; a forced-score text that extends one of their rows forwards only its new tokens (typically
  "\\nScore:" and the tokens around the cut), instead of the whole ~500-token judgment again.

Only plain full-attention caches are reused (every layer a DynamicLayer); a model with sliding-window or linear
attention layers takes the plain path.

The caches the hf backend hands a full-attention model are made of `GrowingLayer`s: transformers' DynamicLayer
appends by concatenation, which copies the layer's whole cache at every decode step. At batch 32 with ~500 cached
tokens (a judgment on the embedded model) those copies were half of judging's time (torch profiler: aten::cat 8.4 s
of 17.5 s). A GrowingLayer writes each step's keys and values into spare room and doubles the room when it is full.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# A prefix shorter than this is not worth a separate forward pass and a cache copy.
MIN_SHARED_PREFIX = 32

Layers = list[tuple["torch.Tensor", "torch.Tensor"]]  # per layer: keys, values of shape [batch, heads, seq, dim]


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens that every row starts with."""
    if not rows:
        return 0
    first, length = rows[0], min(len(row) for row in rows)
    for row in rows[1:]:
        n = 0
        while n < length and row[n] == first[n]:
            n += 1
        length = n
    return length


_PLAIN_LAYERS = ("DynamicLayer", "GrowingLayer")  # full attention, every token kept: what can be reused


def cache_layers(cache: Any) -> Layers | None:
    """The (keys, values) of every layer of a transformers cache, or None where it is not a plain dynamic cache."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ not in _PLAIN_LAYERS or layer.keys is None for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def full_attention(config: Any) -> bool:
    """Whether transformers gives this model a plain dynamic cache (every layer a DynamicLayer)."""
    from transformers import DynamicCache

    return all(type(layer).__name__ == "DynamicLayer" for layer in DynamicCache(config=config).layers)


def make_cache(layers: Layers = ()) -> Any:
    """A cache of GrowingLayers for a full-attention model, holding `layers` (copied: the inputs stay intact)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = growing_layer_class()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


@functools.cache
def growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that appends into spare room (doubled when full) instead of concatenating.

        `keys` and `values` are views of the room, so everything DynamicLayer does with them (crop, batch
        selection, reset) still works; when they no longer view the room, the next update makes a new one.
        """

        _key_room = None
        _value_room = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            cached = self.keys.shape[-2] if self.keys.dim() == 4 else 0
            needed = cached + key_states.shape[-2]
            room = self._key_room
            if (room is None or needed > room.shape[-2] or room.shape[0] != key_states.shape[0]
                    or (cached and room.data_ptr() != self.keys.data_ptr())):
                self._key_room = _room_for(self.keys, key_states, cached, needed)
                self._value_room = _room_for(self.values, value_states, cached, needed)
            self._key_room[..., cached:needed, :].copy_(key_states)
            self._value_room[..., cached:needed, :].copy_(value_states)
            self.keys = self._key_room[..., :needed, :]
            self.values = self._value_room[..., :needed, :]
            return self.keys, self.values

    return GrowingLayer


def _room_for(old: torch.Tensor, new: torch.Tensor, cached: int, needed: int) -> torch.Tensor:
    batch, heads, _, dim = new.shape
    room = new.new_empty(batch, heads, max(2 * needed, 64), dim)
    if cached:
        room[..., :cached, :].copy_(old)
    return room


class PrefixCache:
    """The cache of one shared prefix, recomputed only when the prefix changes."""

    def __init__(self) -> None:
        self._ids: tuple[int, ...] = ()
        self._layers: Layers | None = None

    def shared(self, model: Any, rows: Sequence[Sequence[int]]) -> tuple[int, Layers | None]:
        """(prefix length, its per-layer cache at batch size 1) for rows that share a long enough prefix.

        The cached prefix is used when every row starts with it; otherwise the rows' own common prefix is
        prefilled and kept. Every row keeps at least one token of its own (the forward needs one to read logits
        from). Returns (0, None) when the rows share too little.
        """
        import torch

        limit = min(len(row) for row in rows) - 1
        if self._layers is not None and len(self._ids) <= limit and all(
                tuple(row[: len(self._ids)]) == self._ids for row in rows):
            return len(self._ids), self._layers
        length = min(common_prefix_length(rows), limit)
        if length < MIN_SHARED_PREFIX:
            return 0, None
        ids = tuple(rows[0][:length])
        with torch.inference_mode():
            output = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True, logits_to_keep=1)
        layers = cache_layers(output.cache if hasattr(output, "cache") else output.past_key_values)
        if layers is None:
            return 0, None
        self._ids, self._layers = ids, layers
        return length, layers


@dataclass
class _Batch:
    layers: Layers  # the generation's cache, [batch, heads, cached, dim]
    mask: torch.Tensor  # [batch, cached]: 1 where a cached position holds one of the row's tokens
    tokens: torch.Tensor  # [batch, longest]: each row's tokens in cache order (padding and gap left out), then -1


class RowCache:
    """The cache of the batches of the last `generate` call, for texts that extend one of their rows."""

    def __init__(self) -> None:
        self._batches: list[_Batch] = []

    def clear(self) -> None:
        self._batches = []

    def keep(self, cache: Any, mask: torch.Tensor, tokens: list[list[int]]) -> None:
        """Keep one generated batch: its cache, its attention mask over the cached positions and each row's
        tokens (prompt and generated tokens, in order)."""
        layers = cache_layers(cache)
        if layers is None:
            return
        cached = layers[0][0].shape[-2]
        mask = mask[:, :cached]
        import torch

        # A row's cached tokens: the first `mask.sum()` of its tokens (the last sampled token has no cache entry).
        kept = [row[: int(count)] for row, count in zip(tokens, mask.sum(dim=1).tolist())]
        width = max((len(row) for row in kept), default=0)
        table = torch.tensor([row + [-1] * (width - len(row)) for row in kept], dtype=torch.long).reshape(-1, width)
        self._batches.append(_Batch(layers, mask, table))

    def extend(self, texts: Sequence[Sequence[int]]) -> tuple[Layers, torch.Tensor, list[int]] | None:
        """For texts that all extend rows of one kept batch: (their rows' cache, its mask cut to the shared
        tokens, how many tokens of each text the cache holds). None when no kept batch covers them all.

        Each text keeps at least one token to forward, so the logits of its last token are computed.
        """
        import torch

        for batch in self._batches:
            if not len(batch.tokens):
                continue
            rows, shared = [], []
            for text in texts:
                # the row that shares the most leading tokens with the text (the first of equals), compared in one
                # tensor operation: a Python loop over every row and token took 0.4 s for 32 judgments
                head = torch.tensor(list(text[: batch.tokens.shape[1]]), dtype=torch.long)
                same = (batch.tokens[:, : len(head)] == head).cumprod(dim=1).sum(dim=1)
                best = int(same.argmax())
                rows.append(best)
                shared.append(min(int(same[best]), len(text) - 1))
            if min(shared, default=0) < MIN_SHARED_PREFIX:
                continue
            index = torch.tensor(rows, device=batch.mask.device)
            mask = batch.mask[index]
            # hide the row's cached tokens after the shared ones (the rest of a reply the cut removed, or padding
            # written after an early eos)
            limit = torch.tensor(shared, device=mask.device).unsqueeze(1)
            mask = mask * (mask.cumsum(dim=1) <= limit)
            if rows == list(range(len(batch.tokens))):  # every row, in order: the cache as it is (make_cache copies)
                return batch.layers, mask, shared
            layers = [(keys[index], values[index]) for keys, values in batch.layers]
            return layers, mask, shared
        return None


def expand(layers: Layers, rows: int) -> Layers:
    """A batch-1 cache seen as `rows` identical rows (a view: no copy until the forward appends to it)."""
    return [(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1)) for keys, values in layers]
