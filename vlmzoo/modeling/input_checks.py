"""Checks of a forward's inputs, shared by every family through the generic pair of ``modeling_base``.

Each check refuses what the model cannot compute with a ``ValueError`` / ``TypeError`` whose message says what
to change, instead of an ``IndexError`` from the embedding, a reshape error inside attention or a device-side
assert on a GPU. They stay cheap and ``torch.compile(fullgraph=True)``-safe:

- shape, dtype and type checks read metadata only (no host sync; under compile they become shape guards);
- the one data-dependent check, token ids inside the vocabulary, goes through transformers'
  ``torch_compilable_check`` and runs only where the ids come from outside the model: every call without a cache
  and every prefill / chunk of more than one token. A single-token decode step with a cache (what ``generate``
  feeds back, an id the model itself produced) is not checked, so decoding adds no host sync;
- ``image_sizes`` is checked only when images are encoded (prefill), where the family reads it on the host anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch
from transformers.utils import torch_compilable_check


def is_tracing() -> bool:
    """What transformers' ``is_tracing()`` answers (dynamo compile or export, the jit tracer, CUDA or XPU graph
    capture), at a tenth of its cost (~0.3 us instead of ~5 us on every prefill and train step's data checks): a graph
    capture needs an initialised device, so the capture checks run only then."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())
        or (torch.xpu.is_initialized() and torch.xpu.is_current_stream_capturing())
    )


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _require_tensor(name: str, value, what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor ({what}); got {type(value).__name__}. Call the processor with "
            f"return_tensors='pt'"
        )


# the label of a position where nothing is learned (transformers' loss ignores it)
IGNORE_INDEX = -100

# the dtypes token ids may have: what embeddings index with (uint8 / int16 would wrap or be refused deep inside)
TOKEN_ID_DTYPES = (torch.int64, torch.int32)


def check_text_inputs(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    has_cache: bool,
    vocab_size: int,
    hidden_size: int,
    image_token_id: int | Callable[[], int | None] | None,
    position_ids: torch.Tensor | None = None,
    prefix: str = "",
    token_hints: Mapping[int, str] | None = None,
    placeholder_masks: Sequence[torch.Tensor] = (),
) -> list[int] | None:
    """The ids (or embeddings), the attention mask and the positions of a forward: types, shapes, a non-empty batch,
    ids in the vocabulary (see the module docstring for when that runs). ``prefix="decoder_"`` checks an
    encoder-decoder's decoder side (``decoder_input_ids``, ``decoder_inputs_embeds``, ``decoder_attention_mask``).
    ``token_hints``: out-of-vocabulary id -> what it means and what to do instead (a family's hook, e.g. an id
    that another code base puts in prompts; ``{image_token_id}`` in it is filled in).

    ``placeholder_masks``: bool masks over the ids (the placeholders whose features the forward will place); their
    counts come back from the vocabulary check's host read (one read per prefill, before any encoder runs), or
    ``None`` where that read does not happen (a decode step, traced, ``TRANSFORMERS_DISABLE_TORCH_CHECK=1``)."""
    ids_name, embeds_name = f"{prefix}input_ids", f"{prefix}inputs_embeds"
    if input_ids is not None:
        _require_tensor(ids_name, input_ids, "token ids of shape (batch, sequence)")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"{ids_name} must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dtype not in TOKEN_ID_DTYPES:
            raise TypeError(
                f"{ids_name} must be int64 (or int32) token ids, got dtype {input_ids.dtype}, which cannot hold every id "
                f"of a vocabulary (and embeddings refuse it); convert with {ids_name}.long()"
            )
        if input_ids.dim() != 2:
            raise ValueError(
                f"{ids_name} must be (batch, sequence), got shape {_shape(input_ids)}; add the batch dimension with "
                f"{ids_name}[None] for one sequence"
            )
        batch, length = input_ids.shape
    else:
        _require_tensor(embeds_name, inputs_embeds, "embeddings of shape (batch, sequence, hidden)")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
            raise ValueError(
                f"{embeds_name} must be (batch, sequence, {hidden_size}) for this language model, got shape "
                f"{_shape(inputs_embeds)}"
            )
        batch, length = inputs_embeds.shape[:2]
    if batch == 0 or (length == 0 and not has_cache):
        source = ids_name if input_ids is not None else embeds_name
        raise ValueError(
            f"empty batch: {source} has shape {_shape(input_ids if input_ids is not None else inputs_embeds)}; "
            f"pass at least one sequence of at least one token"
        )
    if attention_mask is not None:
        _check_attention_mask(attention_mask, batch, length, has_cache, f"{prefix}attention_mask")
    if isinstance(position_ids, torch.Tensor) and position_ids.dim() >= 2 and position_ids.shape[-1] != length:
        # (batch, length) or M-RoPE's (streams, batch, length): one position per token of this call
        raise ValueError(
            f"position_ids have shape {_shape(position_ids)} but the inputs have {length} tokens per sequence: give one "
            f"position per input token (when generate() derived them, the attention_mask had the wrong length)"
        )
    if input_ids is not None and (length > 1 or not has_cache):
        return _check_ids_in_vocabulary(
            input_ids, vocab_size, image_token_id, ids_name, token_hints or {}, placeholder_masks
        )
    return None


def _check_attention_mask(attention_mask, batch: int, length: int, has_cache: bool, name="attention_mask") -> None:
    if isinstance(attention_mask, dict):
        return  # the masks generate() pre-builds per layer type for a compiled static cache (transformers' own)
    _require_tensor(name, attention_mask, "1 for tokens to attend to, 0 for padding")
    if attention_mask.dim() != 2:
        return  # 4-D masks are the caller's own (transformers accepts them as given)
    mask_batch, mask_length = attention_mask.shape
    # with a cache the mask also covers the cached tokens, so it may be longer than this call's ids
    fits = mask_length >= length if has_cache else mask_length == length
    if mask_batch != batch or not fits:
        expected = f"({batch}, >= {length})" if has_cache else f"({batch}, {length})"
        raise ValueError(
            f"{name} has shape {_shape(attention_mask)} but the inputs are {batch} sequences of {length} "
            f"tokens: it must be {expected}, one entry per token. Make both with the same processor call."
        )


def check_generation_mask(attention_mask, input_ids) -> None:
    """generate()'s 2-D attention mask against its prompt ids, before positions are derived from it: one row per
    prompt and at least one entry per prompt token (more when generation restarts from a cache)."""
    if not isinstance(attention_mask, torch.Tensor) or not isinstance(input_ids, torch.Tensor):
        return
    if attention_mask.dim() == 2 and input_ids.dim() == 2:
        _check_attention_mask(attention_mask, input_ids.shape[0], input_ids.shape[1], has_cache=True)


def _check_ids_in_vocabulary(
    input_ids: torch.Tensor, vocab_size: int, image_token_id, name: str, token_hints: Mapping[int, str],
    placeholder_masks: Sequence[torch.Tensor] = (),
) -> list[int] | None:  # fmt: skip
    def message() -> str:
        text = (
            f"{name} hold token ids outside the vocabulary [0, {vocab_size}): values from {int(input_ids.min())} "
            f"to {int(input_ids.max())}."
        )
        hints = [hint for token, hint in token_hints.items() if bool((input_ids == token).any())]
        if hints:
            token = image_token_id() if callable(image_token_id) else image_token_id
            text += "".join(" " + hint.format(image_token_id=token) for hint in hints)
        else:
            text += " Use the model's own tokenizer, or grow the embeddings with model.resize_token_embeddings()."
        return text

    if is_tracing():  # torch.compile / export / jit / graph capture: a compiler hint, no host read of the ids
        torch_compilable_check(((input_ids >= 0) & (input_ids < vocab_size)).all(), message)
        return None
    # eager: what torch_compilable_check does there (transformers' switch that turns its checks off included), with
    # one reduction and one host read in place of three elementwise ops, an all() and its item(); the placeholder
    # counts ride along in that read. A decode step never gets here (module docstring)
    if _checks_disabled() or input_ids.numel() == 0:
        return None
    values = torch.stack([*torch.aminmax(input_ids), *(mask.sum() for mask in placeholder_masks)]).tolist()
    if values[0] < 0 or values[1] >= vocab_size:
        raise ValueError(message())
    return values[2:]


def _checks_disabled() -> bool:
    """transformers' switch that turns ``torch_compilable_check`` off (``TRANSFORMERS_DISABLE_TORCH_CHECK=1``), which
    the eager forms of the data checks honour as well."""
    return os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK", "0") == "1"


def check_feature_count(
    mask: torch.Tensor, hidden: int, num_features: int, message: Callable[[int], str], num_tokens: int | None = None
) -> None:
    """The placeholders of ``mask`` (a bool mask over the tokens) times the width ``hidden`` must equal the number of
    feature values (``num_features``): ``ValueError(message(placeholder count))`` otherwise. ``num_tokens``: the count
    already read on the host (by the vocabulary check's read, ``check_text_inputs(placeholder_masks=...)``), compared
    as it is.

    Traced (compile / export / graph capture): ``torch_compilable_check``, a compiler hint. Eager: one reduction and
    one host read of the count, compared on the host (what ``torch_compilable_check`` does there, without its
    multiply, compare, all() and wrapper calls); ``TRANSFORMERS_DISABLE_TORCH_CHECK=1`` turns it off as it does
    transformers' checks. Runs only where features are placed (prefill / image calls), never on a text decode step."""
    if num_tokens is None:
        if is_tracing():
            count = mask.sum()
            torch_compilable_check(count * hidden == num_features, lambda: message(int(count)))
            return
        if _checks_disabled():
            return
        num_tokens = int(mask.sum())
    if num_tokens * hidden != num_features:
        raise ValueError(message(num_tokens))


def check_pixel_input(name: str, pixels) -> None:
    """A modality's pixels: a floating-point tensor (the processor's normalised output)."""
    if isinstance(pixels, (list, tuple)):
        raise TypeError(
            f"{name} must be one torch.Tensor, got a {type(pixels).__name__} of {len(pixels)} entries; call the "
            f"processor with return_tensors='pt' (it stacks the images), or torch.stack them"
        )
    _require_tensor(name, pixels, "the processor's normalised pixels")
    if not pixels.is_floating_point():
        raise TypeError(
            f"{name} must be floating point (the processor's rescaled and normalised pixels), got dtype {pixels.dtype}; "
            f"raw image values go through the processor first"
        )


def check_labels(
    labels, batch: int, length: int, decoder: bool = False, vocab_size: int | None = None,
    count_learned_from: int | None = None,
) -> int | None:  # fmt: skip
    """Labels: integer ids (-100 ignored) of the same (batch, sequence) shape as the inputs (a causal LM) or as the
    ``decoder_input_ids`` (an encoder-decoder LM, ``decoder=True``), and, given ``vocab_size``, inside the vocabulary
    (one host read: labels come with training steps, never with decode steps).

    ``count_learned_from``: also count, in that same host read, the learned labels (not -100) from that position of
    each row on (1: what a causal loss compares after its shift; 0: an encoder-decoder's unshifted targets) and return
    the count, so the loss needs no reduction of its own to divide by it. ``None`` is returned without it, for empty
    labels, and when traced (compile / export: the range check is then ``torch_compilable_check``'s hint)."""
    _require_tensor("labels", labels, "target ids of shape (batch, sequence), -100 where ignored")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer token ids (-100 where ignored), got dtype {labels.dtype}")
    if decoder and labels.dim() != 2:
        raise ValueError(f"labels must be (batch, target length), got shape {_shape(labels)}")
    if _shape(labels) != (batch, length):
        inputs, hint = ("decoder_input_ids", "one target per decoder input") if decoder else (
            "inputs", "one entry per input token (the loss shifts them itself; -100 where nothing is learned)"
        )
        raise ValueError(
            f"labels have shape {_shape(labels)} but the {inputs} are ({batch}, {length}); labels need {hint}"
        )
    if vocab_size is None or labels.numel() == 0:
        return None
    ignored = labels == IGNORE_INDEX
    # the ignored positions read as 0, so any other negative label is the minimum (no boolean-index copy)
    kept = labels.masked_fill(ignored, 0)
    if is_tracing():
        torch_compilable_check(
            ((kept >= 0) & (kept < vocab_size)).all(),
            lambda: f"labels hold ids outside the vocabulary [0, {vocab_size}) (-100, and only -100, marks a position "
            f"where nothing is learned); build them from the model's tokenizer",
        )
        return None
    stats = [*torch.aminmax(kept)]
    if count_learned_from is not None:
        stats.append(ignored[..., count_learned_from:].sum())
    values = torch.stack(stats).tolist()
    low, high = values[0], values[1]
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"labels hold ids from {low} to {high}, outside the vocabulary [0, {vocab_size}) (-100, and only "
            f"-100, marks a position where nothing is learned); build them from the model's tokenizer"
        )
    if count_learned_from is None:
        return None
    return labels[..., count_learned_from:].numel() - values[2]


def check_decoder_inputs(
    decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask, has_cache: bool, vocab_size: int,
    hidden_size: int, encoder_batch: int | None,
) -> None:  # fmt: skip
    """The decoder side of an encoder-decoder LM, as :func:`check_text_inputs` checks the encoder's, plus one
    decoder row per encoded prompt."""
    if decoder_input_ids is None and decoder_inputs_embeds is None:
        return  # the decoder starts from its start token
    check_text_inputs(
        decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask, has_cache, vocab_size, hidden_size, None,
        prefix="decoder_",
    )  # fmt: skip
    decoder = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
    if encoder_batch is not None and decoder.shape[0] != encoder_batch:
        raise ValueError(
            f"the decoder inputs hold {decoder.shape[0]} sequences but the encoder {encoder_batch} prompts: give one "
            f"decoder sequence per prompt"
        )


def check_image_sizes(image_sizes, pixel_values: torch.Tensor) -> None:
    """``image_sizes``: one positive (height, width) row per image of ``pixel_values``."""
    sizes = torch.as_tensor(image_sizes)
    num_images = pixel_values.shape[0]
    if sizes.dim() != 2 or _shape(sizes) != (num_images, 2) or sizes.is_floating_point():
        raise ValueError(
            f"image_sizes must be integer (height, width) rows, one per image: shape ({num_images}, 2) for these "
            f"pixel_values; got {sizes.dtype} of shape {_shape(sizes)}. Pass the processor's image_sizes unchanged."
        )
    torch_compilable_check(
        (sizes > 0).all(),
        lambda: (
            f"image_sizes must be positive (height, width) pairs, got {sizes.tolist()}; pass each image's original size "
            f"as the processor returns it"
        ),
    )
