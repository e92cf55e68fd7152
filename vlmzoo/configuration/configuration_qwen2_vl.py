# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the Qwen2-VL family: naive dynamic resolution, the 2x2 patch merger and M-RoPE.

Wang et al. 2024, "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution"
(arXiv:2409.12191). Field names follow transformers' ``Qwen2VLConfig`` where they mean the same thing, so converted
configs read naturally:

- ``vision_config``: transformers' ``Qwen2VLVisionConfig`` (the native-resolution ViT: ``embed_dim`` its width,
  ``hidden_size`` the width the patch merger maps to, which must be the language model's).
- ``text_config``: any rotary decoder transformers builds from its config (default a plain Qwen2; Llama, Mistral,
  ... work too): M-RoPE is swapped into it by ``vlmzoo.modeling.rope``. ``mrope_section`` (three ints summing to
  head_dim / 2) splits its rotary frequencies among the temporal, height and width streams. transformers keeps the
  sections inside ``text_config.rope_parameters`` (with ``"type": "mrope"``); a text config given so is read and
  normalised (the sections move to this config, the rope type becomes the decoder's ``default``), so a native
  config converts without warnings from the decoder's rope validation.
- ``mrope_temporal_advance``: where the text after a video starts (see ``rope.mrope_position_index``): ``True``, the
  paper's and the official code's rule (after the block's largest position); ``False``, transformers 5.24/5.25's
  (after its largest row / column). They differ only for videos with more merged frames than rows and columns.

Also the family's presets (``tiny`` built offline, and the papers' 2B / 7B sizes, config only) and its recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..presets import register_preset
from .configuration_base import ZooVLMConfig

# Qwen2-VL-7B's ViT (675M): 32 blocks of width 1280, patch 14, 2x2 merge, two frames per temporal patch
QWEN2_VL_VIT = {
    "depth": 32,
    "embed_dim": 1280,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "hidden_act": "quick_gelu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# the paper's sections of Qwen2-7B's 64 rotary frequencies (head_dim 128): temporal, height, width
DEFAULT_MROPE_SECTION = [16, 24, 24]


# the kind of transformers' own Qwen2-VL text config, read here as the plain Qwen2 decoder it describes
NATIVE_TEXT_MODEL_TYPE = "qwen2_vl_text"


# fields a text config rebuilds from others (never carried over as defaults)
_DERIVED_TEXT_FIELDS = {"model_type", "transformers_version", "architectures", "layer_types", "rope_parameters"}


def _native_text_defaults() -> dict:
    """The defaults of transformers' ``Qwen2VLTextConfig`` that differ from ``Qwen2Config``'s (``rms_norm_eps``
    1e-5, the 7B sizes, ...): what a text config that leaves them out means in ``Qwen2VLConfig``."""
    from transformers import Qwen2Config
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig

    native, plain = Qwen2VLTextConfig().to_dict(), Qwen2Config().to_dict()
    return {
        key: value for key, value in native.items()
        if key in plain and plain[key] != value and key not in _DERIVED_TEXT_FIELDS
    }  # fmt: skip


def _without_mrope(rope: Any) -> tuple[Any, list[int] | None]:
    """``rope_parameters`` without M-RoPE's sections (an ``"mrope"`` type read as the decoder's ``"default"``), and
    the sections (``None``: none there)."""
    if not isinstance(rope, Mapping) or not ("mrope_section" in rope or "mrope" in (rope.get("type"), rope.get("rope_type"))):
        return rope, None
    rope = dict(rope)
    sections = rope.pop("mrope_section", None)
    if "mrope" in (rope.pop("type", None), rope.get("rope_type")):
        rope["rope_type"] = "default"
    return rope, None if sections is None else list(sections)


def _normalised_text_config(value: Any) -> tuple[Any, list[int] | None]:
    """The text config as the decoder it describes, with M-RoPE's sections taken out of its ``rope_parameters``
    (``_without_mrope``), and the sections found. transformers' own Qwen2-VL text config (a ``Qwen2VLTextConfig``
    or a dict of its ``model_type``) becomes the Qwen2 decoder's fields; it and a dict without a ``model_type`` (the
    default Qwen2 decoder, its unknown keys named as for every family) take the native defaults for what they leave
    out, as ``Qwen2VLConfig`` reads them."""
    if isinstance(value, PreTrainedConfig):
        if getattr(value, "model_type", None) != NATIVE_TEXT_MODEL_TYPE:
            rope, sections = _without_mrope(getattr(value, "rope_parameters", None))
            if sections is not None:
                value.rope_parameters = rope
            return value, sections
        value = value.to_dict()
    if not isinstance(value, Mapping):
        return value, None
    value = dict(value)
    if value.get("model_type") == NATIVE_TEXT_MODEL_TYPE:
        value = {**_native_text_defaults(), **value, "model_type": "qwen2"}
        value.pop("transformers_version", None)
    elif not value.get("model_type"):
        value = {**_native_text_defaults(), **value}
    for key in ("rope_parameters", "rope_scaling"):
        rope, sections = _without_mrope(value.get(key))
        if rope is not value.get(key):
            value[key] = rope
            return value, sections
    return value, None


@strict
class ZooQwen2VLConfig(ZooVLMConfig):
    r"""
    Args:
        vision_config: the native-resolution ViT's config (transformers' ``Qwen2VLVisionConfig``): patch size,
            ``temporal_patch_size``, ``spatial_merge_size``, ``embed_dim`` (the ViT's width) and ``hidden_size`` (the
            patch merger's output width, which is the language model's ``hidden_size``).
        text_config: any rotary decoder's config (default Qwen2); M-RoPE is swapped into it.
        image_token_id, video_token_id: ids of ``<|image_pad|>`` / ``<|video_pad|>``; the processor expands each to
            one token per merged patch.
        vision_start_token_id, vision_end_token_id: ids of ``<|vision_start|>`` / ``<|vision_end|>``, around each
            image's or video's placeholders.
        mrope_section: how many rotary frequencies the temporal, height and width streams take (sum: head_dim / 2).
        mrope_temporal_advance: the rule for the text position after a video (module docstring).
        training_stages: stage name -> trained components (defaults: the Qwen2-VL recipe).
    """

    model_type = "vlmzoo_qwen2_vl"
    attribute_map = {"image_token_index": "image_token_id", "video_token_index": "video_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="qwen2_vl_vision", init_kwargs={**QWEN2_VL_VIT, "hidden_size": 3584}
        ),
        # Qwen2-7B with Qwen2-VL's vocabulary
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="qwen2",
            init_kwargs={"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                         "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                         "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        ),  # fmt: skip
    }
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision_tower": ("vision_tower",),
        # the 2x2 patch merger: transformers keeps it inside the vision model (`visual.merger`); here it is the
        # projector, so freezing "the vision tower" leaves it training (docs/design.md §4)
        "multi_modal_projector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }
    # Qwen2-VL §2.2: stage 1 trains the ViT (and merger) on image-text pairs with the LLM frozen; stage 2 trains
    # everything; stage 3 fine-tunes on instructions with the ViT frozen. The paper gives no learning rates.
    default_training_stages: ClassVar[dict[str, list[str]]] = {
        "align": ["vision_tower", "multi_modal_projector"],
        "full": ["vision_tower", "multi_modal_projector", "language_model"],
        "instruct": ["multi_modal_projector", "language_model"],
    }

    image_token_id: int | None = 151655
    video_token_id: int | None = 151656
    vision_start_token_id: int | None = 151652
    vision_end_token_id: int | None = 151653
    mrope_section: list[int] | None = None
    mrope_temporal_advance: bool = True

    def __post_init__(self, **kwargs):
        self.text_config, sections = _normalised_text_config(self.text_config)
        if sections is not None:
            if self.mrope_section is not None and list(self.mrope_section) != sections:
                raise ValueError(
                    f"mrope_section={self.mrope_section} disagrees with the sections in text_config's rope_parameters "
                    f"({sections}); give them once"
                )
            self.mrope_section = sections
        super().__post_init__(**kwargs)
        if self.mrope_section is None:
            self.mrope_section = self._default_sections()
        self._check_sections()
        self._check_widths()
        # the video placeholder is embedded and replaced like the image one (vision start / end are the processor's:
        # the model never reads them, and transformers' defaults for them lie outside small test vocabularies)
        vocab_size = self.text_config.vocab_size
        if self.video_token_id is not None and not 0 <= self.video_token_id < vocab_size:
            raise ValueError(
                f"video_token_id={self.video_token_id} is outside the text vocabulary (vocab_size={vocab_size}); use "
                f"the tokenizer's <|video_pad|> id"
            )

    def _head_dim(self) -> int:
        text = self.text_config
        return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

    def _default_sections(self) -> list[int]:
        """The paper's [16, 24, 24] for 64 frequencies, else the same proportions (1/4 temporal, the rest split
        evenly between height and width, height taking the odd one)."""
        frequencies = self._head_dim() // 2
        if frequencies == sum(DEFAULT_MROPE_SECTION):
            return list(DEFAULT_MROPE_SECTION)
        temporal = frequencies // 4
        width = (frequencies - temporal) // 2
        return [temporal, frequencies - temporal - width, width]

    def _check_sections(self) -> None:
        sections = self.mrope_section
        frequencies = self._head_dim() // 2
        if (
            len(sections) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sections)
            or sum(sections) != frequencies
        ):
            raise ValueError(
                f"mrope_section={sections} must be three non-negative ints summing to the text model's {frequencies} "
                f"rotary frequencies (head_dim {2 * frequencies} / 2), e.g. {self._default_sections()}"
            )

    def _check_widths(self) -> None:
        vision, text = self.vision_config, self.text_config
        if vision.hidden_size != text.hidden_size:
            raise ValueError(
                f"vision_config.hidden_size={vision.hidden_size} is the patch merger's output width and must equal the "
                f"language model's hidden_size={text.hidden_size}; set vision_config.hidden_size to it"
            )
        if vision.embed_dim % vision.num_heads:
            raise ValueError(
                f"vision_config.embed_dim={vision.embed_dim} is not divisible by num_heads={vision.num_heads}"
            )
        if (vision.embed_dim // vision.num_heads) % 4:
            raise ValueError(
                f"the ViT's head dim ({vision.embed_dim} / {vision.num_heads}) must be a multiple of 4: its 2-D rotary "
                f"gives half the frequencies to rows and half to columns"
            )

    def demo_overrides(self) -> tuple[dict, str]:
        """``vlmzoo demo``: stage 2 also trains the ViT, and M-RoPE's rotations reach across the 4 x 4 token grid."""
        stages = {name: list(parts) for name, parts in self.training_stages.items()}
        stages["instruct"] = ["vision_tower", "multi_modal_projector", "language_model"]
        text = self.text_config.to_dict()
        text["rope_parameters"] = {**text["rope_parameters"], "rope_theta": 10.0}
        why = (
            "with demo overrides: stage 2 trains the ViT too (the paper freezes its pretrained one), and M-RoPE\n"
            "  gives the height and width streams 4 frequencies each (mrope_section [0, 4, 4], rope_theta 10; preset:\n"
            "  [2, 3, 3], 10,000). With head dims of 16 the preset's width stream turns by under 0.01 rad across the\n"
            "  4 x 4 token grid, and the demo's random ViT has no absolute positions: the position questions need both."
        )
        return {"training_stages": stages, "text_config": text, "mrope_section": [0, 4, 4]}, why

    def demo_image_size(self) -> int:
        """``vlmzoo demo``'s images: 112 px, an 8 x 8 patch grid that merges into 16 tokens (as the other tiny presets)."""
        return 8 * self.vision_config.patch_size

    @property
    def patch_factor(self) -> int:
        """Pixels per side of one merged token (patch_size x spatial_merge_size: 28 for Qwen2-VL)."""
        return self.vision_config.patch_size * self.vision_config.spatial_merge_size


# ----- presets ------------------------------------------------------------------------------------------
def tiny_qwen2_vl_text_config(tokenizer) -> dict:
    """The presets' 2-layer decoder (width 64, head dim 16: 8 rotary frequencies) as a Qwen2 with tied embeddings."""
    from .configuration_llava import tiny_llama_text_config

    return {**tiny_llama_text_config(tokenizer), "model_type": "qwen2", "max_position_embeddings": 4096,
            "tie_word_embeddings": True}  # fmt: skip


TINY_VIT = {
    "model_type": "qwen2_vl_vision",
    "depth": 2,
    "embed_dim": 32,
    "num_heads": 2,
    "mlp_ratio": 2,
    "hidden_act": "quick_gelu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "hidden_size": 64,
}


@register_preset(ZooQwen2VLConfig, "tiny")
def _qwen2_vl_tiny(**overrides) -> dict:
    """Qwen2-VL in miniature: a 2-block ViT (width 32, patch 14, 2x2 merge), a 2-layer Qwen2 with M-RoPE [2, 3, 3]."""
    from ..processing.processing_qwen2_vl import tiny_qwen2_vl_tokenizer

    tokenizer = tiny_qwen2_vl_tokenizer()
    ids = {
        name: tokenizer.convert_tokens_to_ids(getattr(tokenizer, token))
        for name, token in (("image_token_id", "image_token"), ("video_token_id", "video_token"),
                            ("vision_start_token_id", "vision_start_token"), ("vision_end_token_id", "vision_end_token"))
    }  # fmt: skip
    return {
        "vision_config": dict(TINY_VIT),
        "text_config": tiny_qwen2_vl_text_config(tokenizer),
        "mrope_section": [2, 3, 3],
        **ids,
        **overrides,
    }


@register_preset(ZooQwen2VLConfig, "tiny-llama")
def _qwen2_vl_tiny_llama() -> dict:
    """The tiny preset with a Llama text model: M-RoPE on a decoder that has none of its own."""
    preset = _qwen2_vl_tiny()
    preset["text_config"] = {**preset["text_config"], "model_type": "llama"}
    return preset


def _qwen2_text(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, tie: bool) -> dict:
    return {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": tie,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    }  # fmt: skip


@register_preset(ZooQwen2VLConfig, "qwen2-vl-2b")
def _qwen2_vl_2b() -> dict:
    """Qwen2-VL-2B: the 675M ViT + Qwen2-1.5B (tied embeddings), M-RoPE [16, 24, 24]."""
    return {
        "vision_config": {"model_type": "qwen2_vl_vision", **QWEN2_VL_VIT, "hidden_size": 1536},
        "text_config": _qwen2_text(1536, 28, 12, 2, 8960, tie=True),
        "mrope_section": list(DEFAULT_MROPE_SECTION),
    }


@register_preset(ZooQwen2VLConfig, "qwen2-vl-7b")
def _qwen2_vl_7b() -> dict:
    """Qwen2-VL-7B: the 675M ViT + Qwen2-7B, M-RoPE [16, 24, 24]."""
    return {
        "vision_config": {"model_type": "qwen2_vl_vision", **QWEN2_VL_VIT, "hidden_size": 3584},
        "text_config": {**_qwen2_text(3584, 28, 28, 4, 18944, tie=False), "vocab_size": 152064},
        "mrope_section": list(DEFAULT_MROPE_SECTION),
    }


__all__ = ["ZooQwen2VLConfig", "tiny_qwen2_vl_text_config"]
