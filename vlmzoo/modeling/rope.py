"""M-RoPE, the multimodal rotary position embedding of Qwen2-VL, for any rotary decoder.

Paper: Wang et al. 2024, "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any
Resolution" (arXiv:2409.12191), §2.1 "Multimodal Rotary Position Embedding". Each token has three position
components (temporal, height, width) and the rotary frequencies are split in three sections
(``mrope_section``, e.g. ``[16, 24, 24]`` of head_dim / 2 = 64), each section rotated by one component.
Text tokens have equal components, so on text M-RoPE is the ordinary 1-D RoPE.

This module owns:

- ``MultimodalRotaryEmbedding(rotary, mrope_section)``: wraps a decoder's own rotary module. (3, B, L)
  positions give, for each frequency, the cos/sin of the component its section reads (in both halves of the
  head dim, as the usual ``cat((freqs, freqs))`` layout repeats them); (B, L) positions give the wrapped
  module's output unchanged.
- ``swap_in_mrope(language_model, mrope_section)``: puts it in place of ``language_model.rotary_emb`` and
  makes mask creation safe for (3, B, L) positions (below).
- ``mrope_position_index(...)``: the (3, B, L) positions of a prompt of text, images and videos, and its
  ``rope_deltas``.
- ``mrope_decode_positions(...)``: the positions of decode steps from a past length and ``rope_deltas``.

Why any rotary decoder works: transformers 5.24's decoders (Llama, Qwen2, Mistral, ...) call
``self.rotary_emb(hidden_states, position_ids=position_ids)`` once per forward and hand (cos, sin) of shape
(B, L, head_dim) to every layer. Channel c of those tables depends only on the position and on frequency
c mod head_dim / 2, whatever the rope scaling (linear, dynamic, YaRN, Llama 3's), so asking the wrapped module
for the three streams at once and keeping, per channel, the stream of its section is exactly M-RoPE.
Assumed layout: channel c and c + D/2 share frequency c (``cat((freqs, freqs))``, as in Llama, Qwen2,
Mistral, Gemma, Qwen3); a decoder with an interleaved layout (frequency c // 2, e.g. Cohere, GLM) gets
exact results only for equal streams.

Masks: the same ``position_ids`` reach mask creation, which reads them only when there is neither a 2-D
``attention_mask`` nor a cache (to detect packed sequences; ``masking_utils._preprocess_mask_arguments``
expands them to (B, L) and diffs them); with (3, B, L) positions either step raises a RuntimeError.
``swap_in_mrope`` therefore registers a forward pre-hook on the language model that gives such a call an
all-ones 2-D mask; callers should still pass their (padding) ``attention_mask`` as usual.
Limit: the layers also receive ``position_ids``, and flash attention's packed-sequence detection (batch 1,
no padding) reads them as (B, L); (3, B, L) positions are meant for the eager and SDPA kernels (packed (4, B, L)
positions give the layers their text row, below).

Packed batches (padding-free training, ``vlmzoo.modeling.packing``): positions of shape (4, B, L), as transformers'
Qwen2-VL takes them: row 0 the text positions, restarting at 0 per sample (what mask creation and flash attention's
packed-sequence detection read), rows 1..3 the three streams. The pre-hook hands row 0 to the decoder as its
``position_ids`` and stashes the streams on the ``MultimodalRotaryEmbedding``, which uses them when the decoder calls
it with that very row (a plain attribute set and read inside the forward: ``torch.compile(fullgraph=True)`` traces
it). ``MultimodalRotaryEmbedding`` also takes (4, B, L) positions directly.

Text after a visual block: the paper and the official code start it at the block's largest position + 1,
i.e. p + max(t, h, w) for a block at p; transformers 5.24's Qwen2-VL ``get_rope_index`` starts it at
p + max(h, w). They differ only for videos with more (merged) frames than rows and columns;
``temporal_advance`` chooses.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

STREAMS = 3  # temporal, height, width
PACKED_ROWS = 4  # a packed batch's positions: the text positions, then the three streams


def _frequency_count(rotary: nn.Module) -> int:
    """The number of rotary frequencies (head_dim / 2 for a full rotary) of a decoder's rotary module."""
    inv_freq = getattr(rotary, "inv_freq", None)
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1:
        raise ValueError(
            f"the rotary module {type(rotary).__name__} has no 1-D `inv_freq` buffer, so its frequencies cannot be "
            f"split into M-RoPE sections: wrap the rotary module a decoder builds from its text config "
            f"(`language_model.rotary_emb`)"
        )
    return inv_freq.numel()


def _checked_sections(mrope_section: Sequence[int], frequencies: int) -> tuple[int, int, int]:
    sections = tuple(mrope_section) if isinstance(mrope_section, Sequence) else None
    if (
        sections is None
        or len(sections) != STREAMS
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sections)
    ):
        raise ValueError(
            f"mrope_section must be three non-negative ints (the frequencies of the temporal, height and width "
            f"streams), got {mrope_section!r}"
        )
    if sum(sections) != frequencies:
        raise ValueError(
            f"mrope_section {list(sections)} sums to {sum(sections)}, but the rotary module has {frequencies} "
            f"frequencies (head_dim/2 = {frequencies} for head_dim {2 * frequencies}): give three sections that "
            f"sum to {frequencies}"
        )
    return sections  # type: ignore[return-value]


class MultimodalRotaryEmbedding(nn.Module):
    """A decoder's rotary module that also takes M-RoPE's (3, B, L) positions.

    Args:
        rotary: the decoder's own rotary module, ``forward(x, position_ids) -> (cos, sin)`` of shape
            (B, L, rotary dim), with an ``inv_freq`` buffer of rotary dim / 2 frequencies.
        mrope_section: three ints summing to the frequency count: how many frequencies (from the lowest index,
            i.e. the fastest rotation) the temporal, height and width streams take, in that order.

    ``forward(x, position_ids)``: (B, L) positions return exactly ``rotary(x, position_ids)``; (3, B, L)
    positions return (cos, sin) of shape (B, L, rotary dim) where channel c (and c + rotary dim / 2) comes
    from the stream whose section holds frequency c. One call of the wrapped module serves the three streams.
    """

    def __init__(self, rotary: nn.Module, mrope_section: Sequence[int]):
        super().__init__()
        frequencies = _frequency_count(rotary)
        self.mrope_section = _checked_sections(mrope_section, frequencies)
        self.rotary = rotary
        # (stream, first channel, end channel) of each slice of the (..., 2 * frequencies) tables, in channel
        # order: the three sections of the first half, then the same three of the second half
        slices = []
        for half in range(2):
            start = half * frequencies
            for stream, width in enumerate(self.mrope_section):
                slices.append((stream, start, start + width))
                start += width
        self._channel_slices = tuple(slices)
        # (text positions, (3, B, L) streams) of a packed call, stashed by the language model's pre-hook
        # (``swap_in_mrope``); used when the decoder hands this module exactly those text positions
        self._packed_streams: tuple[torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"mrope_section={list(self.mrope_section)}"

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.dim() == 2:
            packed = self._packed_streams
            if packed is None or packed[0] is not position_ids:
                return self.rotary(x, position_ids)
            self._packed_streams = None
            position_ids = packed[1]  # the streams of the packed call whose text positions these are
        elif position_ids.dim() == 3 and position_ids.shape[0] == PACKED_ROWS:
            position_ids = position_ids[1:]  # packed (4, B, L): the text row is for masks, the streams for rotation
        if position_ids.dim() != 3 or position_ids.shape[0] != STREAMS:
            raise ValueError(
                f"M-RoPE position_ids have shape (3, batch, length) (temporal, height, width), (batch, length) or a "
                f"packed batch's (4, batch, length) (text positions, then the three streams), got "
                f"{tuple(position_ids.shape)}"
            )
        streams, batch, length = position_ids.shape
        # (3, B, L) -> (3 * B, L): the wrapped module sees three times the batch
        cos, sin = self.rotary(x, position_ids.reshape(streams * batch, length))
        # (3 * B, L, D) -> (3, B, L, D)
        cos = cos.reshape(streams, batch, length, cos.shape[-1])
        sin = sin.reshape(streams, batch, length, sin.shape[-1])
        return self._by_section(cos), self._by_section(sin)

    def _by_section(self, table: torch.Tensor) -> torch.Tensor:
        """(3, B, L, D) -> (B, L, D): each channel from its section's stream."""
        return torch.cat([table[stream, ..., start:end] for stream, start, end in self._channel_slices], dim=-1)


def _stream_positions_pre_hook(
    names: tuple[str, ...], mrope: MultimodalRotaryEmbedding, module: nn.Module, args: tuple, kwargs: dict
):
    """Forward pre-hook of a language model with M-RoPE (see the module docstring, "Masks" and "Packed batches"):
    packed (4, B, L) positions -> the decoder gets row 0 (text positions) as its ``position_ids``, ``mrope`` the
    streams; (3, B, L) positions with no attention mask and no cache -> an all-ones (B, L) mask."""
    if mrope._packed_streams is not None:
        mrope._packed_streams = None  # never kept from an earlier call
    bound = dict(zip(names, args))

    def given(name):
        return kwargs[name] if kwargs.get(name) is not None else bound.get(name)

    positions = given("position_ids")
    if not isinstance(positions, torch.Tensor) or positions.dim() != 3:
        return None
    if positions.shape[0] == PACKED_ROWS:
        text = positions[0]  # (4, B, L) -> (B, L)
        mrope._packed_streams = (text, positions[1:])
        if "position_ids" in bound:
            args = tuple(text if name == "position_ids" else value for name, value in zip(names, args))
        else:
            kwargs = {**kwargs, "position_ids": text}
        unmasked = given("attention_mask") is None and given("cache") is None and given("past_key_values") is None
        if unmasked and given("use_cache") is None and "use_cache" not in bound:
            # a decoder called directly with a packed row: no cache of the config's default either, which would turn
            # the packed-sequence detection of mask creation off (the VLM's forward already passes use_cache=False)
            kwargs = {**kwargs, "use_cache": False}
        return args, kwargs
    if given("attention_mask") is not None or given("cache") is not None or given("past_key_values") is not None:
        return None
    # (3, B, L) -> the (B, L) mask of a batch without padding
    mask = torch.ones(positions.shape[1:], dtype=torch.long, device=positions.device)
    if "attention_mask" in bound:
        args = tuple(mask if name == "attention_mask" else value for name, value in zip(names, args))
        return args, kwargs
    return args, {**kwargs, "attention_mask": mask}


def swap_in_mrope(language_model: nn.Module, mrope_section: Sequence[int]) -> MultimodalRotaryEmbedding:
    """Replace ``language_model.rotary_emb`` by a ``MultimodalRotaryEmbedding`` around it, in place.

    ``language_model`` is a base decoder (``AutoModel.from_config(text_config)``) or a model with a head whose
    ``base_model`` is one. Also registers the mask pre-hook described in the module docstring. Returns the new
    rotary module. Raises ValueError when the model has no rotary module of that form (already swapped
    included) or when the sections do not sum to its frequency count (head_dim / 2).
    """
    base = getattr(language_model, "base_model", language_model)
    rotary = getattr(base, "rotary_emb", None)
    name = type(language_model).__name__
    if not isinstance(rotary, nn.Module):
        raise ValueError(
            f"{name} has no `rotary_emb` module, so M-RoPE cannot be swapped in: use a decoder with rotary "
            f"position embeddings computed once per forward (`self.rotary_emb(hidden_states, position_ids)`), "
            f"not one with learned, relative or per-layer positions"
        )
    if isinstance(rotary, MultimodalRotaryEmbedding):
        raise ValueError(f"{name} already has M-RoPE (mrope_section={list(rotary.mrope_section)}): swap it in once")
    if "position_ids" not in inspect.signature(rotary.forward).parameters:
        raise ValueError(
            f"{name}.rotary_emb ({type(rotary).__name__}) has no `position_ids` argument: M-RoPE needs a rotary "
            f"module called as `rotary_emb(hidden_states, position_ids)`"
        )
    mrope = MultimodalRotaryEmbedding(rotary, mrope_section)
    base.rotary_emb = mrope
    names = tuple(inspect.signature(base.forward).parameters)
    base.register_forward_pre_hook(partial(_stream_positions_pre_hook, names, mrope), with_kwargs=True)
    return mrope


def merged_grids(kind: str, grid: torch.Tensor, spatial_merge_size: int) -> list[tuple[int, int, int]]:
    """(N, 3) (t, h, w) patch grids -> the merged grids (t, h / m, w / m), read to the host once; ``ValueError``
    naming ``{kind}_grid_thw`` for a wrong shape, non-integers, non-positive counts or unmergeable rows / columns."""
    if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[-1] != STREAMS:
        shape = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise ValueError(f"{kind}_grid_thw must be a ({kind}s, 3) tensor of (t, h, w) patch counts, got {shape}")
    if grid.is_floating_point() or grid.is_complex():
        raise ValueError(f"{kind}_grid_thw must hold integers, got {grid.dtype}")
    rows = grid.tolist()  # one host read: a handful of ints per image
    if any(value < 1 for row in rows for value in row):
        raise ValueError(f"{kind}_grid_thw must be positive (t, h, w) counts, got {rows}")
    if any(height % spatial_merge_size or width % spatial_merge_size for _, height, width in rows):
        raise ValueError(
            f"{kind}_grid_thw {rows} has rows or columns not divisible by spatial_merge_size "
            f"{spatial_merge_size}: a merge block needs whole {spatial_merge_size}x{spatial_merge_size} patches"
        )
    return [(frames, height // spatial_merge_size, width // spatial_merge_size) for frames, height, width in rows]


def mrope_position_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    image_token_id: int | None = None,
    video_token_id: int | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    spatial_merge_size: int = 1,
    *,
    temporal_advance: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE's (3, B, L) positions of a prompt, and its ``rope_deltas``.

    Args:
        input_ids: (B, L) token ids; each image (video) is a run of ``image_token_id`` (``video_token_id``)
            placeholders, one per merged patch, in the grid's (t, row, column) order.
        attention_mask: (B, L), 1 for tokens, 0 for padding (left padding, as generation uses); padding gets
            position 0 on all streams and is skipped by the count.
        image_token_id, video_token_id: the placeholder ids (None: the kind is absent).
        image_grid_thw, video_grid_thw: (N, 3) patch grids (t, h, w) of the images (videos) in reading order
            over the batch (row by row), as the processor gives them.
        spatial_merge_size: patches merged per side into one token; the merged grid is (t, h / m, w / m).
        temporal_advance: the text after a block at position p starts at p + max(t, h / m, w / m), i.e. the
            block's largest position + 1 (True: the paper and the official code) or at p + max(h / m, w / m)
            (False: transformers 5.24's Qwen2-VL). Equal unless a video has more merged frames than rows and
            columns.

    Returns:
        position_ids: (3, B, L) long; a text token at p gets (p, p, p); a block at p gets
            (p + frame, p + row, p + column); text continues after the block as above.
        rope_deltas: (B, 1) long, the largest position of each row + 1 - its number of attended tokens; a
            decode step's positions are then its text position + rope_deltas (``mrope_decode_positions``).

    Cost: vectorised over the whole batch (no loop over rows or blocks): a handful of (B, L) tensor ops plus
    one small op per kind; the count checks read a few scalars back to the host, once per prefill.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, length) tensor, got {shape}")
    if not isinstance(spatial_merge_size, int) or spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size must be a positive int, got {spatial_merge_size!r}")
    batch, length = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attended = torch.ones(batch, length, dtype=torch.bool, device=device)
    elif tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids have {(batch, length)}: give "
            f"one mask value per token"
        )
    else:
        attended = attention_mask.to(device=device).bool()

    # a text token moves the next position on by one, padding by none; a block's tokens by none, except its
    # last token, which moves it on by the block's extent
    advance = attended.long().flatten()  # (B * L,)
    offsets = torch.zeros(STREAMS, batch * length, dtype=torch.long, device=device)  # (frame, row, column)
    for kind, token_id, grid in (("image", image_token_id, image_grid_thw), ("video", video_token_id, video_grid_thw)):
        if token_id is None:
            if grid is not None:
                raise ValueError(f"{kind}_grid_thw was given without {kind}_token_id: name the {kind} placeholder")
            continue
        slots = ((input_ids == token_id) & attended).flatten().nonzero().squeeze(1)  # (n,) in reading order
        count = slots.numel()
        if grid is None:
            if count:
                raise ValueError(
                    f"the text has {count} {kind} tokens but no {kind}_grid_thw was given: pass the (t, h, w) grid "
                    f"of each {kind}"
                )
            continue
        merged = merged_grids(kind, grid, spatial_merge_size)
        # the grids' arithmetic on the host (a few ints per block), then (N,) tensors for the scatter below
        sizes = [frames * height * width for frames, height, width in merged]  # tokens of each block
        expected = sum(sizes)
        if count != expected:
            raise ValueError(
                f"the text has {count} {kind} tokens but {kind}_grid_thw {grid.tolist()} (spatial_merge_size "
                f"{spatial_merge_size}) gives {expected}: one placeholder per merged patch, t*h*w/"
                f"{spatial_merge_size}^2 per {kind}"
            )
        if count == 0:
            continue
        starts_list = [total - size for total, size in zip(itertools.accumulate(sizes), sizes)]
        extents = [max(height, width, frames) if temporal_advance else max(height, width)
                   for frames, height, width in merged]  # fmt: skip
        # (N, 5) per block: first token index, tokens, tokens per frame, columns, extent -> one host-to-device copy
        table = torch.tensor(
            [(start, size, height * width, width, extent)
             for start, size, (_, height, width), extent in zip(starts_list, sizes, merged, extents)],
            dtype=torch.long, device=device,
        )  # fmt: skip
        starts, per_block, plane, columns, extent = table.unbind(-1)
        ends = starts + per_block
        first, last = slots[starts], slots[ends - 1]  # (N,) flat index of each block's first and last token
        broken = (last - first != per_block - 1) | (first // length != last // length)
        if bool(broken.any()):
            j = int(broken.nonzero()[0, 0])
            raise ValueError(
                f"{kind} {j} (grid {grid[j].tolist()}) needs {sizes[j]} consecutive {kind} tokens in one "
                f"row, but its tokens run from row {int(first[j]) // length} position {int(first[j]) % length} to "
                f"row {int(last[j]) // length} position {int(last[j]) % length}: the placeholders disagree with "
                f"{kind}_grid_thw"
            )
        block = torch.repeat_interleave(torch.arange(len(sizes), device=device), per_block, output_size=count)  # (n,)
        inside = torch.arange(count, device=device) - starts[block]  # (n,) index inside its block
        block_plane, block_columns = plane[block], columns[block]
        offsets[0, slots] = inside // block_plane
        offsets[1, slots] = (inside % block_plane) // block_columns
        offsets[2, slots] = inside % block_columns
        advance[slots] = 0
        advance[last] = extent

    advance = advance.view(batch, length)
    start = advance.cumsum(-1) - advance  # (B, L): the position each token's text run (or block) starts at
    # (B, L) + (3, B * L) -> (3, B, L)
    positions = (start.unsqueeze(0) + offsets.view(STREAMS, batch, length)).masked_fill(~attended, 0)
    rope_deltas = positions.amax(dim=(0, 2)) + 1 - attended.sum(-1)  # (B,)
    return positions, rope_deltas.view(batch, 1)


def mrope_decode_positions(
    rope_deltas: torch.Tensor,
    past_length: int | torch.Tensor,
    num_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, B, num_new_tokens) positions of tokens after a cache of ``past_length`` tokens; all streams equal.

    A new token's position is its text position + ``rope_deltas`` ((B, 1), from ``mrope_position_index``).
    Its text position is the number of attended tokens before it, read from ``attention_mask``
    ((B, past_length + num_new_tokens), the whole mask so far, left padding included); without a mask (rows
    without padding) it is ``past_length + i``. Costs one cumsum over the mask, no host sync.
    """
    if rope_deltas.dim() != 2 or rope_deltas.shape[1] != 1:
        raise ValueError(f"rope_deltas must have shape (batch, 1), got {tuple(rope_deltas.shape)}")
    if attention_mask is None:
        steps = torch.arange(num_new_tokens, device=rope_deltas.device) + past_length
        text = steps.view(1, num_new_tokens)  # (1, n)
    else:
        if attention_mask.dim() != 2 or attention_mask.shape[0] != rope_deltas.shape[0]:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but rope_deltas are for "
                f"{rope_deltas.shape[0]} rows: give the (batch, past + new) mask of the same rows"
            )
        # (B, past + n) -> (B, n): attended tokens before each new token
        text = (attention_mask.long().cumsum(-1) - 1)[:, -num_new_tokens:].to(rope_deltas.device)
    return (text + rope_deltas).unsqueeze(0).expand(STREAMS, -1, -1)
