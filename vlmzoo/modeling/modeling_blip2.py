"""The BLIP-2 family (MiniGPT-4 is a preset of it): frozen ViT -> Q-Former with learned queries -> LLM.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language
Models" (2023). On the generic pair of ``modeling_base``; this file holds only BLIP-2's feature path. The vision
tower and the Q-Former are transformers' own (``Blip2VisionModel``, ``Blip2QFormerModel``); the learned queries
are a ``LearnedTokens`` module (``model.query_tokens.weight``, so they train under LoRA), and transformers'
``language_projection`` is the family's ``multi_modal_projector``. Each image gives ``num_query_tokens``
embeddings, placed at the ``<image>`` tokens the processor puts before the prompt. Numerically this matches
transformers' ``Blip2ForConditionalGeneration`` with a decoder-only LM. ``ZooInstructBlip*`` (its own file)
subclasses these classes.
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.blip_2.modeling_blip_2 import (
    BaseModelOutputWithVisionQformerOutputs,
    Blip2QFormerModel,
    Blip2VisionModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_blip2 import ZooBlip2Config
from .blocks import LearnedTokens
from .encoder_decoder import EncoderDecoderGenerationMixin, EncoderDecoderModelMixin
from .docstrings import (
    KWARGS_DOC,
    LM_HEAD_INPUTS_DOC,
    MM_ENCODER_OUTPUTS_DOC,
    forward_docstring,
)
from .vision_towers import floating_dtype
from .modeling_base import (
    ZooPreTrainedModel,
    ZooVLMForConditionalGeneration,
    ZooVLMModel,
    given,
)
from .outputs import (
    ZooVLMCausalLMOutputWithPast,
    ZooVLMModelOutputWithPast,
    ZooVLMSeq2SeqLMOutput,
    ZooVLMSeq2SeqModelOutput,
)

# the inputs of the Q-Former families' forwards, documented once (pixels first, as transformers' BLIP-2 takes them)
QFORMER_PIXELS_DOC = """
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, image_size, image_size)`, *optional*):
            The processor's normalised pixels; each image gives `num_query_tokens` embeddings, written at the
            `<image>` placeholders the processor puts before the prompt."""

QFORMER_TEXT_DOC = """
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The prompt's token ids from the processor (the image placeholders included). Exactly one of `input_ids`
            and `inputs_embeds`.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for padding (with a cache: over cached and new tokens)."""

QFORMER_DECODER_DOC = """
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            With an encoder-decoder LM (Flan-T5): the decoder's inputs. Without them the decoder reads the `labels`
            shifted right, or starts from its start token. Refused with a decoder-only LM.
        decoder_attention_mask (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            With an encoder-decoder LM: the decoder inputs' mask.
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Embeddings in place of `input_ids` (image placeholders are found by their embedding)."""

QFORMER_REST_DOC = """
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Interpolate the vision tower's position embeddings for images of another size than the tower's.
        cache (`transformers.Cache`, *optional*):
            The key/value cache of earlier steps (`past_key_values` is accepted until transformers 5.40).
        use_cache (`bool`, *optional*):
            Return the updated cache."""

QFORMER_KWARGS_DOC = (
    KWARGS_DOC
    + """ With a decoder-only LM, `position_ids` may come here; with an encoder-decoder LM,
            `decoder_inputs_embeds` and `encoder_outputs` (what generate() passes on)."""
)


class ZooBlip2PreTrainedModel(ZooPreTrainedModel):
    config: ZooBlip2Config
    config_class = ZooBlip2Config
    _supports_flash_attn = False  # transformers' Q-Former has no flash-attention path
    # as transformers' BLIP-2: the Q-Former and its queries stay in float32 when the model loads in float16
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    # as transformers' Q-Former models: the pixels are the main (first) input; generation decodes from the prompt
    main_input_name = "pixel_values"


class QFormerModel(EncoderDecoderModelMixin, ZooVLMModel):
    """What the Q-Former families' base models share: vision tower + learned queries + Q-Former + projector + base
    language model (no LM head), with the pixels first, as transformers' Q-Former models take them. The families'
    own classes add their configs (and BLIP-2 its feature API); InstructBLIP swaps the Q-Former call."""

    family_input_names = ("interpolate_pos_encoding",)
    # get_image_features is transformers' Blip2Model's (the tower's outputs); the forward places the projected queries
    feature_methods = {"image": "get_projected_image_features"}
    vision_tower_class = Blip2VisionModel
    qformer_class = Blip2QFormerModel

    def build_components(self, config: ZooBlip2Config) -> None:
        qformer_width = config.qformer_config.hidden_size
        self.vision_tower = self.vision_tower_class._from_config(config.vision_config)
        self.query_tokens = LearnedTokens(
            config.num_query_tokens, qformer_width, std=config.qformer_config.initializer_range
        )
        self.qformer = self.qformer_class._from_config(config.qformer_config)
        self.multi_modal_projector = nn.Linear(qformer_width, config.text_config.hidden_size)
        self.tower_side = config.vision_config.image_size  # read on every image call (a config read costs ~1 us)

    def build_language_model(self, text_config):
        language_model = super().build_language_model(text_config)
        # transformers' BLIP-2 runs OPT as OPTForCausalLM, whose forward calls the decoder stack directly (OPTModel's
        # forward only repackages the decoder's output): decode steps run the same stack; the weights stay where they are
        if text_config.model_type == "opt":
            self.language_model_stack = "decoder"
        return language_model

    def encode_images(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None, **kwargs
    ) -> BaseModelOutputWithVisionQformerOutputs:
        """Run the vision tower on (num_images, 3, H, W) pixels; ``last_hidden_state`` is (images, patches + 1, width)."""
        # BLIP-2's patch embedding is an RGB Conv2d (its config has no num_channels)
        channels = self.vision_tower.embeddings.patch_embedding.in_channels
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be (num_images, {channels}, height, width), got {shape}")
        side = self.tower_side
        if not interpolate_pos_encoding and tuple(pixel_values.shape[-2:]) != (side, side):
            raise ValueError(
                f"pixel_values must be {side}x{side} images for this vision tower, got {tuple(pixel_values.shape[-2:])}; "
                f"use the model's processor, or interpolate_pos_encoding=True for other sizes"
            )
        tower = self.vision_tower(
            pixel_values=pixel_values.to(floating_dtype(self.vision_tower)),
            interpolate_pos_encoding=bool(interpolate_pos_encoding),
            return_dict=True,
            **kwargs,
        )
        return BaseModelOutputWithVisionQformerOutputs(
            last_hidden_state=tower.last_hidden_state,
            pooler_output=tower.pooler_output,
            hidden_states=tower.hidden_states,
            attentions=tower.attentions,
            vision_outputs=tower,
        )

    def run_qformer(self, image_embeds: torch.Tensor, **qformer_inputs):
        """The learned queries cross-attend to the image embeddings: output (images, num_query_tokens, width)."""
        image_embeds = image_embeds.to(floating_dtype(self.qformer))
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens(image_embeds.shape[0], like=image_embeds)  # (images, queries, width)
        outputs = self.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, return_dict=True
        )
        return outputs, outputs.last_hidden_state

    @can_return_tuple
    def get_projected_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithVisionQformerOutputs:
        """Tower -> Q-Former -> projector, what the forward places at the image tokens (and what transformers'
        ``Blip2ForConditionalGeneration.get_image_features`` returns): ``pooler_output`` is the list of each image's
        (num_query_tokens, LM width) embeddings, ``vision_outputs`` / ``qformer_outputs`` the two encoders' outputs."""
        return self._image_features(pixel_values, interpolate_pos_encoding, {}, kwargs)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """The vision tower's outputs, as transformers' ``Blip2Model.get_image_features``: ``last_hidden_state``
        (num_images, patches + 1, width), ``pooler_output`` (num_images, width). The generation class's
        ``get_image_features`` returns the projected embeddings (``get_projected_image_features``), as transformers'
        ``Blip2ForConditionalGeneration`` does."""
        outputs = self.encode_images(pixel_values, interpolate_pos_encoding, **kwargs)
        return outputs.vision_outputs

    @property
    def vision_model(self):
        """transformers' name of the vision tower (``vision_tower`` in vlmzoo)."""
        return self.vision_tower

    def _image_features(self, pixel_values, interpolate_pos_encoding, qformer_inputs: dict, kwargs: dict):
        outputs = self.encode_images(pixel_values, interpolate_pos_encoding, **kwargs)
        outputs.qformer_outputs, query_output = self.run_qformer(outputs.last_hidden_state, **qformer_inputs)
        projector_dtype = self.multi_modal_projector.weight.dtype
        features = self.multi_modal_projector(query_output.to(projector_dtype))  # (images, queries, LM width)
        outputs.pooler_output = list(features)
        return outputs

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "BLIP-2's base model (no LM head): tower, Q-Former and projector, then the language model (with Flan-T5: its "
        "encoder over the prompt, its decoder over the decoder inputs).",
        QFORMER_PIXELS_DOC, QFORMER_TEXT_DOC, QFORMER_DECODER_DOC, QFORMER_REST_DOC, MM_ENCODER_OUTPUTS_DOC,
        QFORMER_KWARGS_DOC,
        returns="`ZooVLMModelOutputWithPast` with a decoder-only LM, `ZooVLMSeq2SeqModelOutput` with an "
        "encoder-decoder LM (both with `image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        interpolate_pos_encoding: bool = False,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMModelOutputWithPast | ZooVLMSeq2SeqModelOutput:
        kwargs.update(given(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask))
        return self.multimodal_forward(
            input_ids, inputs_embeds, attention_mask, kwargs.pop("position_ids", None), cache, use_cache,
            {"pixel_values": pixel_values}, given(interpolate_pos_encoding=interpolate_pos_encoding),
            mm_encoder_outputs, kwargs,
        )  # fmt: skip


class ZooBlip2Model(ZooBlip2PreTrainedModel, QFormerModel):
    """BLIP-2's base model, with transformers' ``Blip2Model`` feature API (``get_image_features``: the tower's outputs;
    ``get_qformer_features``; ``get_text_features``)."""

    def get_qformer_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The Q-Former's last hidden states over the images, before the projector (as transformers'
        ``Blip2Model.get_qformer_features``): (num_images, num_query_tokens, Q-Former width)."""
        vision = self.encode_images(pixel_values, interpolate_pos_encoding)
        _, query_output = self.run_qformer(vision.last_hidden_state)
        return query_output

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """The language model's states over text alone (as transformers' ``Blip2Model.get_text_features``): the
        decoder's with a decoder-only LM, the encoder's with an encoder-decoder LM; ``last_hidden_state`` is
        (batch, sequence, LM width). ``decoder_input_ids``, ``decoder_attention_mask`` and ``labels`` are accepted
        for native's signature and not read."""
        encoder = self.get_encoder() if self.config.is_encoder_decoder else self.language_model
        outputs = encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )  # fmt: skip


def bind_pixels_first(args: tuple, kwargs: dict, order: tuple[str, ...], method: str) -> tuple[tuple, dict]:
    """transformers' Q-Former call form: when the first positional argument is floating (pixels, never token ids),
    bind the positional arguments to the names in ``order`` (e.g. ``pixel_values, input_ids, attention_mask``)."""
    if not (order and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point()):
        return args, kwargs
    if len(args) > len(order):
        raise TypeError(
            f"with pixel_values first, {method}() takes at most {len(order)} positional inputs ({', '.join(order)}); "
            f"pass the others by keyword"
        )
    for name, value in zip(order, args):
        if name in kwargs:
            raise TypeError(f"{method}() got multiple values for argument '{name}'")
        kwargs = {**kwargs, name: value}
    return (), kwargs


class QFormerGenerationMixin(EncoderDecoderGenerationMixin):
    """What transformers' Q-Former models expose: ``vision_model``, pixels first, cached decoding with a decoder LM,
    and the encoder-decoder (Flan-T5) path."""

    # transformers' BLIP-2 generate() takes its inputs positionally in this order: generate(pixel_values, input_ids, ...)
    native_generate_order = ("pixel_values", "input_ids", "attention_mask")

    @property
    def vision_model(self):
        """transformers' name of the vision tower (``vision_tower`` in vlmzoo)."""
        return self.model.vision_tower

    def generate(self, *args, **kwargs):
        """``GenerationMixin.generate`` with transformers' Q-Former conventions: pixels may come first, positionally
        (``generate(pixel_values, input_ids, attention_mask)``); pixels without a prompt read the query placeholders
        (and BOS, when the LM has one), as transformers builds them; with a decoder-only LM, generation always uses
        the cache (transformers generates from ``inputs_embeds``, for which ``use_cache=False`` is ignored)."""
        args, kwargs = bind_pixels_first(args, kwargs, self.native_generate_order, "generate")
        if not self.config.is_encoder_decoder:
            kwargs["use_cache"] = True
        pixels = kwargs.get("pixel_values")
        if pixels is not None and not args and kwargs.get("input_ids") is None and kwargs.get("inputs_embeds") is None:
            start = [self.config.image_token_id] * self.config.num_query_tokens
            bos = getattr(self.config.get_text_config(), "bos_token_id", None)
            start += [bos] if bos is not None else []
            kwargs["input_ids"] = torch.tensor([start], device=pixels.device).repeat(pixels.shape[0], 1)
        return super().generate(*args, **kwargs)

    def _prepare_model_inputs(self, inputs=None, bos_token_id=None, model_kwargs=None):
        """GenerationMixin decodes from the prompt (``input_ids`` / ``inputs_embeds``), while transformers' Q-Former
        models name the pixels their ``main_input_name``: read the prompt, and leave the pixels a model input."""
        self.main_input_name = "input_ids"  # an instance attribute over the class's "pixel_values", for this call
        try:
            inputs, input_name, model_kwargs = super()._prepare_model_inputs(inputs, bos_token_id, model_kwargs)
        finally:
            del self.main_input_name
        # the forward has no position_ids (as native), so GenerationMixin would not derive them; a decoder-only LM
        # decodes from the mask's positions, as it does inside transformers' BLIP-2 (its LM's own generate())
        # (from ids or embeddings alike: with a static cache the mask reaches the LM in 4-D, from which it cannot
        # derive positions itself)
        if not self.config.is_encoder_decoder and model_kwargs.get("position_ids") is None:
            model_kwargs["position_ids"] = self._prepare_position_ids_for_generation(inputs, model_kwargs)
        return inputs, input_name, model_kwargs


class ZooBlip2ForConditionalGeneration(
    QFormerGenerationMixin, ZooBlip2PreTrainedModel, ZooVLMForConditionalGeneration, GenerationMixin
):
    """BLIP-2 with its LM head: ``AutoModelForImageTextToText`` loads it."""

    base_model_class = ZooBlip2Model

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "BLIP-2 with its LM head: logits over the vocabulary and, with `labels`, the loss (with Flan-T5, the "
        "decoder's: labels are the answer, shifted right into the decoder inputs when those are absent).",
        QFORMER_PIXELS_DOC, QFORMER_TEXT_DOC, QFORMER_DECODER_DOC, LM_HEAD_INPUTS_DOC, QFORMER_REST_DOC,
        MM_ENCODER_OUTPUTS_DOC, QFORMER_KWARGS_DOC,
        returns="`ZooVLMCausalLMOutputWithPast` with a decoder-only LM, `ZooVLMSeq2SeqLMOutput` with an "
        "encoder-decoder LM (both with `loss`, `logits`, `image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMCausalLMOutputWithPast | ZooVLMSeq2SeqLMOutput:
        model_inputs = dict(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
            inputs_embeds=inputs_embeds, interpolate_pos_encoding=interpolate_pos_encoding, cache=cache,
            use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs,
        )  # fmt: skip
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


__all__ = ["QFormerModel", "ZooBlip2PreTrainedModel", "ZooBlip2Model", "ZooBlip2ForConditionalGeneration"]
