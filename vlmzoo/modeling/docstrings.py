"""The documentation of the forwards' arguments, shared by every family (docs/design.md §4: readable forwards).

Each family's ``forward`` lists its arguments explicitly, typed, and documents them with :func:`forward_docstring`
from these sections (generic arguments, the LM head's, pre-computed encoder outputs, transformers' keyword
arguments) plus its own, so ``help(model.forward)`` shows every argument with its type.
"""

from __future__ import annotations

from collections.abc import Callable

MODEL_INPUTS_DOC = """
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids from the family's processor, each image (video) placeholder expanded to one token per visual
            embedding. Exactly one of `input_ids` and `inputs_embeds`.
        pixel_values (`torch.FloatTensor`, *optional*):
            The processor's normalised pixels; their shape is the family's (see its image processor). Encoded once
            (at prefill when generating) and written at the image placeholders; the counts must agree.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for padding (with a cache: over cached and new tokens).
        position_ids (`torch.LongTensor`, *optional*):
            Positions of the language model, `(batch_size, sequence_length)` (or `(3, batch_size, sequence_length)`
            for M-RoPE families); derived from the mask when absent.
        cache (`transformers.Cache`, *optional*):
            The key/value cache of earlier steps (`past_key_values` is accepted until transformers 5.40).
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Embeddings in place of `input_ids` (image placeholders are found by their embedding).
        use_cache (`bool`, *optional*):
            Return the updated cache."""

MM_ENCODER_OUTPUTS_DOC = """
        mm_encoder_outputs (`dict[str, BaseModelOutputWithPooling]`, *optional*):
            Pre-computed `get_<modality>_features` outputs by modality (`"image"`, `"video"`), in place of the
            pixels (generate() and chunked prefill encode once and pass them on)."""

LM_HEAD_INPUTS_DOC = """
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the language-modelling loss, aligned with the inputs (the loss shifts them), -100 where
            nothing is learned.
        logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
            Compute the logits of the last `logits_to_keep` positions only (0: all), or of the given indices."""

KWARGS_DOC = """
        **kwargs:
            transformers' keyword arguments (`output_attentions`, `output_hidden_states`, `return_dict`,
            `num_items_in_batch`, attention-backend options), passed on to the sub-models."""


def forward_docstring(summary: str, *sections: str, returns: str) -> Callable:
    """Give a forward its docstring: ``summary``, then the documented arguments (``sections``, in signature order),
    then what it returns. Sets ``__doc__`` only: the signature stays the function's own."""

    def decorate(function):
        function.__doc__ = f"{summary}\n\n        Args:{''.join(sections)}\n\n        Returns:\n            {returns}\n        "
        return function

    return decorate


__all__ = ["KWARGS_DOC", "LM_HEAD_INPUTS_DOC", "MM_ENCODER_OUTPUTS_DOC", "MODEL_INPUTS_DOC", "forward_docstring"]
