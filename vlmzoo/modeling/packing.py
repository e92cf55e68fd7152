"""Padding-free (packed) batches in the skeleton: several samples in one row, attention isolated per sample.

The layout (what ``vlmzoo.training.VLMDataCollator(processor, packing=True, model=model)`` makes, as transformers'
``DataCollatorWithFlattening`` does for text): the samples' tokens one after another in ``input_ids`` of shape
(1, total), no padding and no ``attention_mask``; ``position_ids`` restarting at 0 at each sample's first token,
(1, total), or (4, 1, total) for a language model with M-RoPE (row 0 the text positions, rows 1..3 the temporal,
height and width streams, as transformers' Qwen2-VL takes them); the images of every sample in order in the pixel
inputs, with their family inputs (one row per image) as the processor made them.

The skeleton recognises such a call by its inputs alone: positions given, no attention mask, no cache (the condition
under which transformers' mask creation looks for packed sequences, ``masking_utils.find_packed_sequence_indices``).
:func:`packed_language_model_inputs` then makes the language model's attention stay inside each sample, whatever the
decoder:

- mask-based attention (``sdpa``, ``eager``, ``flex_attention``): the block-diagonal causal mask, built once by
  transformers' ``create_causal_mask`` from the text positions and handed to the decoder as its (4-D) attention
  mask. Decoders that do not give their positions to mask creation (OPT) and decoders that would make an empty cache
  first (``use_cache`` from the config: a cache turns the packed-sequence detection off) get the same mask;
- flash attention (any ``*flash*`` implementation): transformers' varlen kwargs ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` from the text positions (unless the caller gave them), which every transformers attention layer
  hands to the kernel;
- anything else (an attention function without a mask function, e.g. a serving engine's paged attention) cannot
  isolate samples and raises ``ValueError``, as do sliding-window layers on mask-based attention when a sample is
  longer than the window, and ``use_cache=True`` (a packed row cannot fill a KV cache).

A call whose positions give one sequence per row (no restart) is not packed and is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_causal_mask, find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids
from transformers.utils import is_tracing
from transformers.utils.generic import is_flash_attention_requested

# rows of packed M-RoPE positions: the text positions, then the three streams (temporal, height, width)
PACKED_MROPE_ROWS = 4
FLASH_VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def text_positions(position_ids: torch.Tensor) -> torch.Tensor | None:
    """The (B, L) text positions of ``position_ids``: themselves when (B, L) (or (L,)), row 0 of packed M-RoPE's
    (4, B, L); ``None`` for M-RoPE's (3, B, L), which hold no text row (one sample per row: never packed)."""
    if position_ids.dim() == 1:
        return position_ids.unsqueeze(0)
    if position_ids.dim() == 2:
        return position_ids
    if position_ids.dim() == 3 and position_ids.shape[0] == PACKED_MROPE_ROWS:
        return position_ids[0]
    if position_ids.dim() == 3 and position_ids.shape[0] == PACKED_MROPE_ROWS - 1:
        return None
    raise ValueError(
        f"position_ids have shape {tuple(position_ids.shape)}: give (batch, length) positions, M-RoPE's (3, batch, "
        f"length) or a packed batch's (4, batch, length) (row 0 the text positions, rows 1..3 the M-RoPE streams)"
    )


def _sliding_windows(text_config) -> list[int]:
    """The attention windows of the decoder's layers that do not attend to the whole past, from its config; raises
    for layer kinds a causal block mask cannot express (chunked, linear attention)."""
    kinds = set(getattr(text_config, "layer_types", None) or ())
    other = sorted(kinds - {"full_attention", "sliding_attention"})
    if other:
        raise ValueError(
            f"packed (padding-free) batches need every layer's attention to be causal over its sample, but the "
            f"language model has {other} layers; use padded batches (VLMDataCollator without packing)"
        )
    window = getattr(text_config, "sliding_window", None)
    if window is None or getattr(text_config, "use_sliding_window", True) is False:
        if "sliding_attention" in kinds:
            raise ValueError("the language model has sliding-window layers without a sliding_window size")
        return []
    return [int(window)]


def packed_language_model_inputs(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    use_cache: bool | None,
    kwargs: dict,
) -> tuple[torch.Tensor | None, bool | None, dict]:
    """For a call with positions, no attention mask and no cache: the attention mask, ``use_cache`` and kwargs that
    keep each packed sample's attention to itself (see the module docstring); unchanged when the positions hold one
    sequence per row. ``language_model`` is the decoder the skeleton calls (its ``config`` names the attention)."""
    text = text_positions(position_ids)
    if text is None:
        return None, use_cache, kwargs
    text = text.to(inputs_embeds.device)
    batch = inputs_embeds.shape[0]
    if text.shape[0] != batch:
        text = text.expand(batch, -1)
    sequences = find_packed_sequence_indices(text)  # None: one sequence per row (never None while tracing)
    if sequences is None:
        return None, use_cache, kwargs
    if is_tracing(text):
        # a compiled call cannot tell a packed row from a plain one here: the mask below serves both, and an explicit
        # use_cache=True (a plain prefill) is kept
        use_cache = use_cache if use_cache else False
    elif use_cache:
        raise ValueError(
            "use_cache=True with a packed (padding-free) batch: a row of several samples cannot fill a KV cache; "
            "train with use_cache=False (the default for packed batches) or generate from unpacked prompts"
        )
    else:
        use_cache = False  # not the config's default either: a cache would also turn transformers' packed detection off
    config = language_model.config
    implementation = config._attn_implementation
    if is_flash_attention_requested(config):
        if any(kwargs.get(name) is None for name in FLASH_VARLEN_KWARGS):
            (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(text)
            if not is_tracing(max_q):
                max_q = max_k = int(max_q)
            kwargs = {**kwargs, "cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k, "max_length_q": max_q,
                      "max_length_k": max_k}  # fmt: skip
        return None, use_cache, kwargs
    if implementation not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"the language model's attention implementation {implementation!r} has no mask function, so it cannot "
            f"keep the samples of a packed (padding-free) batch apart; use 'sdpa', 'eager', 'flex_attention' or a "
            f"flash attention (model.set_attn_implementation(...)), or padded batches"
        )
    windows = _sliding_windows(config)
    if windows:
        # a full causal block equals a sliding one when no sample is longer than the window; positions restart at 0
        # and grow by one inside a sample, so the longest sample is the largest position + 1
        longest = int(text.max()) + 1
        if longest > min(windows):
            raise ValueError(
                f"a packed sample has {longest} tokens, more than the language model's sliding window "
                f"({min(windows)}): a {implementation} block mask cannot keep both the window and the samples apart; "
                f"use flash attention or padded batches"
            )
    mask = create_causal_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=None, cache=None,
                              position_ids=text)  # fmt: skip
    return mask, use_cache, kwargs


__all__ = ["PACKED_MROPE_ROWS", "packed_language_model_inputs", "text_positions"]
