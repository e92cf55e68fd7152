"""``ZooLlavaProcessor``: tokenizer + image processor + chat template for the LLaVA family.

Follows transformers' processor contract (``ProcessorMixin``): each ``<image>`` placeholder in the text is
expanded to exactly the number of visual tokens the model will produce for that image. Fixed resolution:
``(H // patch) * (W // patch) + num_additional_image_tokens`` minus the CLS token that the ``"default"``
strategy drops, then what the projector makes of them (``vlmzoo.projector_tokens``: e.g. ``pixel_shuffle``
divides by ratio^2). AnyRes: base view + un-padded tile grid + one newline per feature row (LLaVA-NeXT).
"""

from __future__ import annotations

from transformers.processing_utils import ProcessorMixin

from ..projector_tokens import projector_keeps_grid, projector_num_tokens, projector_options
from .image_transforms import anyres_num_tokens, dropped_tokens, tokens_per_view


class ZooLlavaProcessor(ProcessorMixin):
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
        image_token: str = "<image>",
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
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
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

    def num_image_tokens(self, image_inputs: dict, image_idx: int) -> int:
        """Tokens the model produces for image ``image_idx`` of the image processor's output."""
        pixel_values = image_inputs["pixel_values"][image_idx]
        height, width = pixel_values.shape[-2:]
        per_view = self.tokens_per_view(height, width)
        if "image_sizes" not in image_inputs:
            return per_view
        image_size = [int(side) for side in image_inputs["image_sizes"][image_idx]]
        return anyres_num_tokens(image_size, self.image_processor.image_grid_pinpoints, height, self.patch_size, per_view)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens(image_inputs, image_idx)


__all__ = ["ZooLlavaProcessor"]
