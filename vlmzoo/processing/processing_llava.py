"""``ZooLlavaProcessor``: tokenizer + image processor + chat template for the LLaVA family.

Follows transformers' processor contract (``ProcessorMixin``): each ``<image>`` placeholder in the text is
expanded to exactly the number of visual tokens the model will produce for that image. Fixed resolution:
``(H // patch) * (W // patch) + num_additional_image_tokens`` minus the CLS token that the ``"default"``
strategy drops, then what the projector makes of them (``vlmzoo.geometry``: e.g. ``pixel_shuffle``
divides by ratio^2). AnyRes: base view + un-padded tile grid + one newline per feature row (LLaVA-NeXT).
"""

from __future__ import annotations

from transformers.processing_utils import MultiModalData

from ..geometry import (
    anyres_num_tokens,
    dropped_tokens,
    projector_keeps_grid,
    projector_num_tokens,
    projector_options,
    tokens_per_view,
    tower_extra_tokens,
)
from .image_processing_anyres import ZooAnyResImageProcessor
from .image_processing_fixed import ZooFixedResImageProcessor
from .processing_common import ZooProcessorMixin

DEFAULT_IMAGE_TOKEN = "<image>"


class ZooLlavaProcessor(ZooProcessorMixin):
    r"""
    Args:
        image_processor: a ``ZooFixedResImageProcessor`` (LLaVA 1.0/1.5) or ``ZooAnyResImageProcessor`` (NeXT).
        tokenizer: the language model's tokenizer; must know ``image_token``.
        patch_size: the vision tower's patch size.
        vision_feature_select_strategy: ``"default"`` (drop CLS) or ``"full"``, as in the model config.
        num_additional_image_tokens: tokens the tower adds besides patches (1 for CLIP's CLS, 0 for SigLIP).
        image_token: the placeholder string.
        chat_template: Jinja template; assistant replies wrapped in ``{% generation %}`` for training masks.
        projector_type: the model config's ``projector_type`` (its token count per view), saved with the processor.
        projector_config: the model config's ``projector_config`` (the projector's options).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int = 14,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 1,
        image_token: str | None = None,
        chat_template: str | None = None,
        projector_type: str = "mlp2x_gelu",
        projector_config: dict | None = None,
        **kwargs,
    ):
        dropped_tokens(vision_feature_select_strategy)  # ValueError on unknown strategies
        projector_options(projector_type, projector_config)  # ValueError on unknown projectors / options
        if getattr(image_processor, "image_grid_pinpoints", None) and not projector_keeps_grid(projector_type):
            raise ValueError(
                f"projector '{projector_type}' changes the token grid, which AnyRes (image_grid_pinpoints) does not "
                f"support; use a fixed-resolution image processor"
            )
        self.projector_type = projector_type
        self.projector_config = projector_config
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        # an explicit argument wins; else the tokenizer's own image token; else LLaVA's "<image>"
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no '{self.image_token}' token; add it as a special token first")
        self.image_token_id = image_token_id
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def tokens_per_view(self, height: int, width: int) -> int:
        """Visual tokens of one view of (height, width) pixels after feature selection and the projector."""
        selected = tokens_per_view(
            height, width, self.patch_size, self.num_additional_image_tokens, self.vision_feature_select_strategy
        )
        return projector_num_tokens(self.projector_type, selected, self.projector_config)

    def num_image_tokens(self, image_inputs: dict, image_idx: int, image_grid_pinpoints=None) -> int:
        """Tokens the model produces for image ``image_idx`` of the image processor's output.

        ``image_grid_pinpoints``: the per-call override the image processor used, if any.
        """
        pixel_values = image_inputs["pixel_values"][image_idx]
        height, width = pixel_values.shape[-2:]
        per_view = self.tokens_per_view(height, width)
        if "image_sizes" not in image_inputs:
            return per_view
        image_size = [int(side) for side in image_inputs["image_sizes"][image_idx]]
        pinpoints = image_grid_pinpoints if image_grid_pinpoints is not None else self.image_processor.image_grid_pinpoints
        return anyres_num_tokens(image_size, pinpoints, height, self.patch_size, per_view)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        pinpoints = kwargs.get("image_grid_pinpoints")
        return self.image_token * self.num_image_tokens(image_inputs, image_idx, image_grid_pinpoints=pinpoints)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Image tokens (and pixel batches) each (height, width) image gets, without processing pixels.

        The hook serving engines (vLLM) use to size their buffers; the same geometry as ``__call__``.
        """
        if image_sizes is None:
            return MultiModalData()
        image_processor = self.image_processor
        size = image_processor.crop_size if image_processor.do_center_crop else image_processor.size
        side = size.get("height") or size.get("shortest_edge")
        per_view = self.tokens_per_view(side, side)
        pinpoints = kwargs.get("image_grid_pinpoints") or getattr(image_processor, "image_grid_pinpoints", None)
        if pinpoints is None:
            tokens = [per_view for _ in image_sizes]
        else:
            tokens = [anyres_num_tokens([int(h), int(w)], pinpoints, side, self.patch_size, per_view) for h, w in image_sizes]
        # one pixel batch per image, as transformers' LLaVA-NeXT processor reports
        return MultiModalData(num_image_tokens=tokens, num_image_patches=[1] * len(image_sizes))

    @classmethod
    def from_model_config(
        cls,
        config,
        tokenizer,
        *,
        image_processor_settings: dict | None = None,
        pad_to_square: bool = False,
        anyres_pad: bool = True,
        image_token: str | None = None,
        chat_template: str | None = None,
        num_additional_image_tokens: int | None = None,
    ) -> "ZooLlavaProcessor":
        """The processor a ``ZooLlavaConfig`` needs, built in one place (presets, converters, docs).

        The image side follows the config's tower (view size, extra tokens), its AnyRes pinpoints, feature
        selection and projector; ``image_processor_settings`` (e.g. a checkpoint's saved mean, std or
        resample) override the image processor's defaults.
        """
        vision = config.vision_config
        side = vision.image_size
        settings = {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}
        settings.update(image_processor_settings or {})
        if config.image_grid_pinpoints is not None:
            image_processor = ZooAnyResImageProcessor(
                image_grid_pinpoints=config.image_grid_pinpoints, do_pad=anyres_pad, **settings
            )
        else:
            image_processor = ZooFixedResImageProcessor(pad_to_square=pad_to_square, **settings)
        if num_additional_image_tokens is None:
            num_additional_image_tokens = tower_extra_tokens(vision)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=num_additional_image_tokens,
            image_token=image_token,
            chat_template=chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None),
            projector_type=config.projector_type,
            projector_config=config.projector_config,
        )


__all__ = ["ZooLlavaProcessor"]
