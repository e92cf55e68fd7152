"""``ZooQwen2VLProcessor``: tokenizer + dynamic-resolution image processor + ChatML template, Qwen2-VL (Wang et al. 2024).

Follows transformers' ``Qwen2VLProcessor``: the chat template writes ``<|vision_start|><|image_pad|><|vision_end|>``
per image and ``<|vision_start|><|video_pad|><|vision_end|>`` per video; each ``<|image_pad|>`` (``<|video_pad|>``)
is expanded to ``grid_t * grid_h * grid_w / merge_size**2`` tokens, one per merged 2x2 patch block (the image
processor's ``image_grid_thw`` / ``video_grid_thw``), and ``mm_token_type_ids`` (0 text, 1 image, 2 video; the
M-RoPE index reads it) comes with every encoding unless ``return_mm_token_type_ids=False``, as there.

Videos: transformers' ``Qwen2VLVideoProcessor`` needs torchvision, and a ``video_processor`` sub-processor of
``ProcessorMixin`` must be a ``VideoProcessorMixin`` that ``AutoVideoProcessor`` (torchvision again) loads. So the
image processor handles ``videos=`` too, as transformers' Qwen2-VL image processor did before the split: the
processor's ``video_processor`` is its image processor (read-only, nothing more is saved), and ``videos=`` /
per-call video options (``fps``, ``num_frames``, ``video_metadata``, ``max_video_tokens``, ...) go through
``ProcessorMixin.__call__`` unchanged.

The tiny tokenizer of the presets (:func:`tiny_qwen2_vl_tokenizer`) has the ChatML and vision tokens at fixed ids
(``TINY_TOKEN_IDS``).
"""

from __future__ import annotations

from transformers.processing_utils import MultiModalData

from ..geometry import merged_grid_tokens
from ..tiny_tokenizer import build_tiny_tokenizer
from .chat_templates import PART_TYPES, VIDEO_PART, chatml_chat_template
from .image_processing_qwen2_vl import ZooDynamicResolutionImageProcessor, split_videos
from .image_transforms import check_positive_int
from .processing_common import ZooProcessorMixin

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2-VL-Instruct's conversation format (ChatML, default system turn), replies in {% generation %}
CHAT_TEMPLATE = chatml_chat_template(
    image_placeholder=VISION_START_TOKEN + IMAGE_TOKEN + VISION_END_TOKEN,
    video_placeholder=VISION_START_TOKEN + VIDEO_TOKEN + VISION_END_TOKEN,
)

# the tiny tokenizer's special tokens, in id order (ids 0..6), and what names them on the tokenizer
TINY_SPECIAL_TOKENS = (
    PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN,
)  # fmt: skip
TINY_TOKEN_IDS = {token: index for index, token in enumerate(TINY_SPECIAL_TOKENS)}
TINY_TOKENIZER_OPTIONS = {
    "special_tokens": TINY_SPECIAL_TOKENS,
    "named_tokens": {
        "image_token": IMAGE_TOKEN,
        "video_token": VIDEO_TOKEN,
        "vision_start_token": VISION_START_TOKEN,
        "vision_end_token": VISION_END_TOKEN,
    },
    "bos_token": None,  # Qwen2 tokenizers have none; the template writes no BOS
    "eos_token": IM_END_TOKEN,  # what an assistant reply ends with (inside {% generation %})
    "pad_token": PAD_TOKEN,
    "chat_template": CHAT_TEMPLATE,
}


def tiny_qwen2_vl_tokenizer(padding_side: str = "left"):
    """The presets' tiny byte-level BPE with Qwen2-VL's special tokens (``TINY_TOKEN_IDS``: ``<|endoftext|>`` 0 (pad),
    ``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos), ``<|vision_start|>`` 3, ``<|vision_end|>`` 4, ``<|image_pad|>`` 5,
    ``<|video_pad|>`` 6) and the ChatML chat template; ``tokenizer.image_token`` / ``video_token`` name the pads."""
    return build_tiny_tokenizer(padding_side=padding_side, **TINY_TOKENIZER_OPTIONS)


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"the tokenizer has no '{token}' token; add it as a special token first")
    return token_id


class ZooQwen2VLProcessor(ZooProcessorMixin):
    r"""
    Args:
        image_processor: a ``ZooDynamicResolutionImageProcessor`` (it processes videos too).
        tokenizer: the language model's tokenizer; must know ``<|image_pad|>`` and ``<|video_pad|>`` (or name its own
            in ``tokenizer.image_token`` / ``tokenizer.video_token``, as transformers reads them).
        chat_template: Jinja template; default the tokenizer's. Assistant replies in ``{% generation %}``.
    """

    return_mm_token_type_ids = True  # transformers' Qwen2VLProcessor default: the M-RoPE index needs them
    tiny_tokenizer_options = TINY_TOKENIZER_OPTIONS
    chat_part_types = PART_TYPES + (VIDEO_PART,)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if not isinstance(image_processor, ZooDynamicResolutionImageProcessor):
            raise TypeError(
                f"{type(self).__name__} needs a ZooDynamicResolutionImageProcessor, got {type(image_processor).__name__}"
            )
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        self.image_token_id = _token_id(tokenizer, self.image_token)
        self.video_token_id = _token_id(tokenizer, self.video_token)
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @property
    def video_processor(self) -> ZooDynamicResolutionImageProcessor:
        """The image processor, which processes videos too (see the module docstring); not saved separately."""
        return self.image_processor

    def _merge_size(self, options: dict) -> int:
        merge = options.get("merge_size")
        return check_positive_int("merge_size", self.image_processor.merge_size if merge is None else merge)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        grid = image_inputs["image_grid_thw"][image_idx].tolist()
        return self.image_token * merged_grid_tokens(grid, self._merge_size(kwargs))

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        grid = video_inputs["video_grid_thw"][video_idx].tolist()
        return self.video_token * merged_grid_tokens(grid, self._merge_size(kwargs))

    def _process_videos(self, videos, **kwargs):
        processed = self.image_processor.preprocess_videos(videos, **kwargs)
        count = len(processed["video_grid_thw"])
        return processed, [self.replace_video_token(processed, video_idx=index, **kwargs) for index in range(count)]

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is not None:
            split_videos(videos)  # ValueError for a video without frames (transformers would drop it silently)
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs) -> MultiModalData:
        """Tokens (and patches) of (height, width) images and (num_frames, height, width) videos, without pixels.

        The hook serving engines (vLLM) use to size their buffers; the same geometry as ``__call__`` (video frame
        counts are taken as already sampled).
        """
        merged = self._merge_kwargs(**kwargs)
        data = {}
        if image_sizes is not None:
            options = merged.get("images_kwargs", {})
            merge = self._merge_size(options)
            patches = [self.image_processor.get_number_of_image_patches(int(h), int(w), options) for h, w in image_sizes]
            data.update(num_image_tokens=[count // merge**2 for count in patches], num_image_patches=patches)
        if video_sizes is not None:
            options = merged.get("videos_kwargs", {})
            merge = self._merge_size(options)
            patches = [self.image_processor.get_num_of_video_patches(int(t), int(h), int(w), options) for t, h, w in video_sizes]
            data.update(num_video_tokens=[count // merge**2 for count in patches])
        return MultiModalData(**data)

    @property
    def model_input_names(self) -> list[str]:
        return super().model_input_names + ["mm_token_type_ids"]

    @classmethod
    def from_model_config(
        cls, config, tokenizer, *, image_processor_settings: dict | None = None, chat_template: str | None = None
    ) -> "ZooQwen2VLProcessor":
        """The processor a Qwen2-VL config needs: the vision config's ``patch_size``, ``temporal_patch_size`` and
        ``spatial_merge_size``; ``image_processor_settings`` (e.g. a checkpoint's ``min_pixels`` / ``max_pixels``)
        override the image processor's defaults. ``ValueError`` when the config's ``image_token_id`` /
        ``video_token_id`` are not the tokenizer's image / video tokens."""
        vision = config.vision_config
        settings = {
            "patch_size": vision.patch_size,
            "temporal_patch_size": vision.temporal_patch_size,
            "merge_size": vision.spatial_merge_size,
            **(image_processor_settings or {}),
        }
        processor = cls(
            image_processor=ZooDynamicResolutionImageProcessor(**settings),
            tokenizer=tokenizer,
            chat_template=chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None),
        )
        for name, token, token_id in (("image_token_id", processor.image_token, processor.image_token_id),
                                      ("video_token_id", processor.video_token, processor.video_token_id)):  # fmt: skip
            configured = getattr(config, name, None)
            if configured is not None and configured != token_id:
                raise ValueError(
                    f"config.{name} is {configured} but the tokenizer's {token} has id {token_id}; build the config "
                    f"from this tokenizer's ids"
                )
        return processor


__all__ = ["ZooQwen2VLProcessor", "tiny_qwen2_vl_tokenizer"]
