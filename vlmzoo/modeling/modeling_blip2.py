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
from transformers.models.blip_2.modeling_blip_2 import (
    BaseModelOutputWithVisionQformerOutputs,
    Blip2QFormerModel,
    Blip2VisionModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_blip2 import ZooBlip2Config
from .modeling_base import (
    LearnedTokens,
    ZooPreTrainedModel,
    ZooVLMForConditionalGeneration,
    ZooVLMModel,
    bind_pixels_first,
)


class ZooBlip2PreTrainedModel(ZooPreTrainedModel):
    config: ZooBlip2Config
    config_class = ZooBlip2Config
    _supports_flash_attn = False  # transformers' Q-Former has no flash-attention path
    # as transformers' BLIP-2: the Q-Former and its queries stay in float32 when the model loads in float16
    _keep_in_fp32_modules = ["query_tokens", "qformer"]


class ZooBlip2Model(ZooBlip2PreTrainedModel, ZooVLMModel):
    """Vision tower + learned queries + Q-Former + projector + base language model (no LM head)."""

    family_input_names = ("interpolate_pos_encoding",)
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

    def encode_images(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None, **kwargs
    ) -> BaseModelOutputWithVisionQformerOutputs:
        """Run the vision tower on (num_images, 3, H, W) pixels; ``last_hidden_state`` is (images, patches + 1, width)."""
        vision = self.config.vision_config
        # BLIP-2's patch embedding is an RGB Conv2d (its config has no num_channels)
        channels = self.vision_tower.embeddings.patch_embedding.in_channels
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be (num_images, {channels}, height, width), got {shape}")
        side = vision.image_size
        if not interpolate_pos_encoding and tuple(pixel_values.shape[-2:]) != (side, side):
            raise ValueError(
                f"pixel_values must be {side}x{side} images for this vision tower, got {tuple(pixel_values.shape[-2:])}; "
                f"use the model's processor, or interpolate_pos_encoding=True for other sizes"
            )
        tower = self.vision_tower(
            pixel_values=pixel_values.to(self.vision_tower.dtype),
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
        image_embeds = image_embeds.to(self.qformer.dtype)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens(image_embeds.shape[0], like=image_embeds)  # (images, queries, width)
        outputs = self.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, return_dict=True
        )
        return outputs, outputs.last_hidden_state

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithVisionQformerOutputs:
        """Tower -> Q-Former -> projector; ``pooler_output`` is the list of each image's (num_query_tokens, LM width)
        embeddings, ``vision_outputs`` / ``qformer_outputs`` the two encoders' outputs (as transformers' BLIP-2)."""
        return self._image_features(pixel_values, interpolate_pos_encoding, {}, kwargs)

    def _image_features(self, pixel_values, interpolate_pos_encoding, qformer_inputs: dict, kwargs: dict):
        outputs = self.encode_images(pixel_values, interpolate_pos_encoding, **kwargs)
        outputs.qformer_outputs, query_output = self.run_qformer(outputs.last_hidden_state, **qformer_inputs)
        projector_dtype = self.multi_modal_projector.weight.dtype
        features = self.multi_modal_projector(query_output.to(projector_dtype))  # (images, queries, LM width)
        outputs.pooler_output = list(features)
        return outputs


class QFormerGenerationMixin:
    """What transformers' Q-Former models expose: ``vision_model``, pixels first, cached decoding with a decoder LM."""

    # transformers' BLIP-2 takes its inputs positionally in this order: model(pixel_values, input_ids, ...)
    native_pixels_first_order = (
        "pixel_values", "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"
    )  # fmt: skip

    @property
    def vision_model(self):
        """transformers' name of the vision tower (``vision_tower`` in vlmzoo)."""
        return self.model.vision_tower

    def generate(self, *args, **kwargs):
        """``GenerationMixin.generate`` with transformers' Q-Former conventions: pixels may come first, positionally
        (``generate(pixel_values, input_ids, attention_mask)``); pixels without a prompt read the query placeholders
        (and BOS, when the LM has one), as transformers builds them; with a decoder-only LM, generation always uses
        the cache (transformers generates from ``inputs_embeds``, for which ``use_cache=False`` is ignored)."""
        order = tuple(name for name in self.native_pixels_first_order if not name.startswith("decoder_"))
        args, kwargs = bind_pixels_first(args, kwargs, order, "generate")
        if not self.config.is_encoder_decoder:
            kwargs["use_cache"] = True
        pixels = kwargs.get("pixel_values")
        if pixels is not None and not args and kwargs.get("input_ids") is None and kwargs.get("inputs_embeds") is None:
            start = [self.config.image_token_id] * self.config.num_query_tokens
            bos = getattr(self.config.get_text_config(), "bos_token_id", None)
            start += [bos] if bos is not None else []
            kwargs["input_ids"] = torch.tensor([start], device=pixels.device).repeat(pixels.shape[0], 1)
        return super().generate(*args, **kwargs)


class ZooBlip2ForConditionalGeneration(
    QFormerGenerationMixin, ZooBlip2PreTrainedModel, ZooVLMForConditionalGeneration, GenerationMixin
):
    """BLIP-2 with its LM head: ``AutoModelForImageTextToText`` loads it."""

    base_model_class = ZooBlip2Model


__all__ = ["ZooBlip2PreTrainedModel", "ZooBlip2Model", "ZooBlip2ForConditionalGeneration"]
