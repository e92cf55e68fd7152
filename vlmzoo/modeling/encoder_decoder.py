"""Encoder-decoder language models in the skeleton (docs/design.md §4): the mixins a family composes to accept one.

The generic pair of ``modeling_base`` is decoder-only. A family whose config lists encoder-decoder LMs
(``encoder_decoder_language_models``: BLIP-2 and InstructBLIP take Flan-T5, Chung et al. 2022) composes
:class:`EncoderDecoderModelMixin` into its base model and :class:`EncoderDecoderGenerationMixin` into its
generation class. With an encoder-decoder LM:

- the prompt, with its media written at their placeholders, goes through the LM's encoder once
  (``get_encoder()`` returns it, as transformers' BLIP-2 does); ``generate()`` runs it before the first
  decoding step (``_maybe_prepare_encoder_kwargs_for_generation``) and every step then reads
  ``encoder_outputs``;
- the decoder reads ``decoder_input_ids`` or, with ``labels`` only, the labels shifted right by the LM's own
  ``_shift_right`` (from the decoder start token, -100 read as padding); without either it starts from its start token (as transformers'
  Florence-2);
- the head reads the decoder states, scaled by ``d_model ** -0.5`` when the text config sets
  ``scale_decoder_outputs`` (T5 with a tied head); the loss compares the logits with the labels unshifted;
- ``position_ids`` are refused (the positions of such LMs are relative).

With a decoder-only LM the mixins step aside and the generic path runs.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import torch_compilable_check

from .input_checks import check_decoder_inputs, check_labels
from .outputs import ZooVLMSeq2SeqLMOutput, ZooVLMSeq2SeqModelOutput

# the inputs of an encoder-decoder language model's decoder side
SEQ2SEQ_INPUT_NAMES = ("decoder_input_ids", "decoder_attention_mask", "decoder_inputs_embeds", "encoder_outputs")


def refuse_decoder_only_labels(labels: torch.Tensor, input_ids: torch.Tensor | None) -> None:
    """``ValueError`` for labels laid out for a decoder-only LM (same shape as ``input_ids``, every row's first
    label -100, each learned label the input token at its own position): the decoder would learn the conversation."""
    if input_ids is None or labels.shape != input_ids.shape or labels.dim() != 2:
        return
    learned = labels != -100
    laid_out_for_a_decoder = learned.any() & ~learned[:, 0].any() & ((labels == input_ids) | ~learned).all()
    torch_compilable_check(
        ~laid_out_for_a_decoder,
        "labels are laid out for a decoder-only language model (each learned label is the input token at its own "
        "position, the prompt -100), but this model's language model is an encoder-decoder: its labels are the "
        "decoder's targets (the reply), and these would train the decoder on the whole conversation. Build the batch "
        "with vlmzoo.training.VLMDataCollator(processor, model=model) (or encoder_decoder=True)",
    )


def _seq2seq_inputs(kwargs: dict) -> dict:
    """Take the decoder-side inputs that were given out of ``kwargs``."""
    return {name: kwargs.pop(name) for name in SEQ2SEQ_INPUT_NAMES if kwargs.get(name) is not None}


class EncoderDecoderModelMixin:
    """For a family's base model (before ``ZooVLMModel`` in the bases): the encoder-decoder path of ``forward``."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # structural (the language model was built from the text config): read on every forward, where a transformers
        # config read costs ~1 us
        self._encoder_decoder_lm = bool(config.is_encoder_decoder)

    def get_encoder(self, modality: str | None = None):
        """The text encoder of an encoder-decoder LM (as native BLIP-2); a modality's encoder otherwise."""
        if modality is None and self.config.is_encoder_decoder:
            return self.language_model.get_encoder()
        return super().get_encoder(modality=modality)

    def multimodal_forward(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, pixel_inputs, family_inputs,
        mm_encoder_outputs, kwargs,
    ):  # fmt: skip
        if not self._encoder_decoder_lm:
            return super().multimodal_forward(
                input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, pixel_inputs, family_inputs,
                mm_encoder_outputs, kwargs,
            )  # fmt: skip
        if position_ids is not None:
            raise ValueError(
                f"position_ids are not an input of an encoder-decoder language model "
                f"('{self.config.get_text_config().model_type}' positions are relative): leave them out. Packed "
                f"(padding-free) batches are refused for such LMs: their encoder would need a block-diagonal "
                f"bidirectional mask and their decoder per-sample self- and cross-attention; use padded batches"
            )
        seq2seq_inputs = _seq2seq_inputs(kwargs)
        encoder_outputs = seq2seq_inputs.pop("encoder_outputs", None)
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if encoder_outputs is None:
            inputs_embeds, mm_encoder_outputs = self.embed_multimodal(
                input_ids, inputs_embeds, attention_mask, None, None, pixel_inputs, family_inputs, mm_encoder_outputs
            )
            encoder_outputs = self.get_encoder()(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True, **kwargs
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(*encoder_outputs)  # (last_hidden_state, hidden_states, attentions)
        text_config = self.config.get_text_config()
        encoded = encoder_outputs.last_hidden_state
        check_decoder_inputs(
            seq2seq_inputs.get("decoder_input_ids"), seq2seq_inputs.get("decoder_inputs_embeds"),
            seq2seq_inputs.get("decoder_attention_mask"), cache is not None, self.get_input_embeddings().num_embeddings,
            text_config.hidden_size, encoded.shape[0],
        )  # fmt: skip
        if "decoder_input_ids" not in seq2seq_inputs and "decoder_inputs_embeds" not in seq2seq_inputs:
            # no target yet: the decoder's first step, from its start token (as transformers' Florence-2)
            start = self.config.get_text_config(decoder=True).decoder_start_token_id
            seq2seq_inputs["decoder_input_ids"] = torch.full(
                (encoded.shape[0], 1), start, dtype=torch.long, device=encoded.device
            )
        outputs = self.language_model(
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **seq2seq_inputs,
            **kwargs,
        )
        return ZooVLMSeq2SeqModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=encoded,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            image_outputs=mm_encoder_outputs.get("image"),
            video_outputs=mm_encoder_outputs.get("video"),
        )


class EncoderDecoderGenerationMixin:
    """For a family's generation class (before ``ZooVLMForConditionalGeneration`` in the bases): the decoder's
    targets, the head's scaling, the unshifted loss and ``generate()``'s encoding of the prompt."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._encoder_decoder_lm = bool(config.is_encoder_decoder)  # structural, read on every forward (as above)

    def language_modeling_forward(self, labels, logits_to_keep, model_inputs: dict, kwargs: dict):
        if not self._encoder_decoder_lm:
            return super().language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)
        text_config = self.config.get_text_config()
        model_inputs = {**model_inputs, **_seq2seq_inputs(kwargs)}  # the decoder side, wherever it was given
        learned = None  # the learned targets (unshifted), counted by the label check's host read
        if labels is not None:
            # the decoder's targets; without decoder inputs the decoder reads them shifted right (as T5 does)
            decoder_ids = model_inputs.get("decoder_input_ids")
            target_shape = decoder_ids.shape if decoder_ids is not None else labels.shape[:2]
            learned = check_labels(
                labels, *target_shape, decoder=True, vocab_size=text_config.vocab_size, count_learned_from=0
            )
            if decoder_ids is None:
                refuse_decoder_only_labels(labels, model_inputs.get("input_ids"))
            if decoder_ids is None and model_inputs.get("decoder_inputs_embeds") is None:
                # the LM's own shift (T5 / UMT5: start token first, -100 read as padding)
                model_inputs["decoder_input_ids"] = self.model.language_model._shift_right(labels)
        outputs = self.model(**model_inputs, return_dict=True, **kwargs)
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        if getattr(text_config, "scale_decoder_outputs", False):
            hidden_states = hidden_states * text_config.d_model**-0.5  # T5's head reads d_model^-0.5-scaled states
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # a decoder's labels are aligned with its inputs (it reads them shifted right): not shifted again
            shift_labels = None if "shift_labels" in kwargs else labels.contiguous()
            loss = self.language_modeling_loss(logits, labels, text_config.vocab_size, learned, kwargs, shift_labels)
        fields = {name: getattr(outputs, name) for name in ZooVLMSeq2SeqModelOutput.__dataclass_fields__}
        fields.pop("last_hidden_state")
        return ZooVLMSeq2SeqLMOutput(loss=loss, logits=logits, **fields)

    def _maybe_prepare_encoder_kwargs_for_generation(
        self, inputs_tensor, model_kwargs, model_input_name, generation_config
    ) -> dict:
        """Run the prompt, with its media placed, through the LM's encoder once; every decoding step then reads
        ``encoder_outputs`` (the pixels are not passed on)."""
        if not self.config.is_encoder_decoder:
            return super()._maybe_prepare_encoder_kwargs_for_generation(
                inputs_tensor, model_kwargs, model_input_name, generation_config
            )
        if model_kwargs.get("encoder_outputs") is not None:
            return model_kwargs
        prompt = {"input_ids": None, "inputs_embeds": model_kwargs.pop("inputs_embeds", None)}
        prompt["inputs_embeds" if model_input_name == "inputs_embeds" else "input_ids"] = inputs_tensor
        base = self.model
        pixel_inputs = {name: model_kwargs.pop(name, None) for name in base.modality_pixel_inputs.values()}
        family_inputs = {name: model_kwargs.pop(name) for name in base.family_input_names if name in model_kwargs}
        family_inputs = {name: value for name, value in family_inputs.items() if value is not None}
        inputs_embeds, _ = base.embed_multimodal(
            prompt["input_ids"], prompt["inputs_embeds"], model_kwargs.get("attention_mask"), None, None,
            pixel_inputs, family_inputs, model_kwargs.pop("mm_encoder_outputs", None),
        )  # fmt: skip
        model_kwargs["encoder_outputs"] = base.get_encoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=model_kwargs.get("attention_mask"),
            output_attentions=generation_config.output_attentions,
            output_hidden_states=generation_config.output_hidden_states,
            return_dict=True,
        )
        return model_kwargs


__all__ = ["EncoderDecoderGenerationMixin", "EncoderDecoderModelMixin", "SEQ2SEQ_INPUT_NAMES"]
