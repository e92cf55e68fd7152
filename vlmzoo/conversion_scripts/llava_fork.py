"""What every checkpoint of the LLaVA code base and its forks shares (LLaVA, LLaVA-HR, Mini-Gemini, EAGLE).

These repositories save a ``LlavaLlamaForCausalLM``-style model: the LLM's fields at the top of
``config.json`` plus ``mm_*`` fields for the multimodal wrapper, weights ``model.embed_tokens`` /
``model.layers.*`` / ``model.norm`` / ``lm_head`` / ``model.mm_projector.*``, images marked in the prompt by
the out-of-vocabulary index ``IMAGE_TOKEN_INDEX = -200`` instead of a token, and the vicuna_v1 conversation
format. This module owns reading those fields (:class:`LlavaForkConfig`), the key rules for the language
model and the projector, adding ``<image>`` to the tokenizer and growing the embeddings by mean rows
(:func:`setup_image_token`), the tokenizer's pad token and the chat template, and the check that the feature
layer exists in the vision tower. A fork's converter adds its own tower rules and config translation.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedConfig

from ..processing.chat_templates import VICUNA_V1_SYSTEM, vicuna_chat_template
from .common import ConversionError, TensorTransform, grow_rows_with_mean, read_json

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # what the original code puts in input_ids for an image
SELECT_FEATURE_STRATEGIES = {"patch": "default", "cls_patch": "full"}  # mm_vision_select_feature -> vlmzoo
# config.json keys that describe the multimodal wrapper or training, not the LLM
NON_TEXT_PREFIXES = ("mm_", "tune_mm_", "freeze_mm_", "unfreeze_mm_", "tokenizer_", "image_", "optimize_vision")
NON_TEXT_KEYS = {"use_mm_proj", "architectures", "model_type", "_name_or_path", "transformers_version"}
GROWN_BY_IMAGE_TOKEN = ("model.language_model.embed_tokens.weight", "lm_head.weight")

# the fork's LM and projector weights; a family puts its tower / extra rules first (the LM rule catches `model.*`)
PROJECTOR_RULES = [
    (r"model\.mm_projector\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),  # linear (LLaVA 1.0)
    (r"model\.mm_projector\.0\.(.+)", r"model.multi_modal_projector.linear_1.\1"),  # mlp2x_gelu: 0 and 2
    (r"model\.mm_projector\.2\.(.+)", r"model.multi_modal_projector.linear_2.\1"),
]
LANGUAGE_MODEL_RULES = [
    (r"model\.(.+)", r"model.language_model.\1"),  # embed_tokens, layers.*, norm
    (r"lm_head\.(.+)", r"lm_head.\1"),
]

# LLaVA 1.5's conversation format (conv_vicuna_v1): "<system> USER: <image>\n<q> ASSISTANT: <a></s>USER: ..."
VICUNA_V1_CHAT_TEMPLATE = vicuna_chat_template(VICUNA_V1_SYSTEM)
CHAT_TEMPLATES = {"vicuna_v1": VICUNA_V1_CHAT_TEMPLATE}


# ----- config.json ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LlavaForkConfig:
    """The ``config.json`` of a LLaVA-fork checkpoint; errors name the file."""

    path: Path
    raw: dict[str, Any]

    @classmethod
    def from_directory(cls, directory: str | Path) -> LlavaForkConfig:
        path = Path(directory) / "config.json"
        return cls(path, read_json(path))

    def error(self, message: str) -> ConversionError:
        return ConversionError(f"'{self.path}': {message}")

    def get(self, name: str, default: Any = None) -> Any:
        return self.raw.get(name, default)

    def choice(self, table: dict, name: str, default: Any = None) -> Any:
        """``table[config[name]]``; a value the table lacks is refused with the supported ones."""
        value = self.raw.get(name, default)
        if value not in table:
            raise self.error(f"{name} '{value}' is not supported; supported values: {[k for k in table if k is not None]}")
        return table[value]

    def require(self, name: str, why: str = "is this a LLaVA checkpoint?") -> Any:
        if name not in self.raw:
            raise self.error(f"the config has no {name} ({why})")
        return self.raw[name]

    @property
    def model_type(self) -> str | None:
        return self.raw.get("model_type")

    @property
    def vision_tower(self) -> str | None:
        """``mm_vision_tower``: a Hub id or a local path of the original training machine (never read)."""
        return self.raw.get("mm_vision_tower") or self.raw.get("vision_tower")

    @property
    def select_layer(self) -> int | list[int]:
        return self.require("mm_vision_select_layer")

    @property
    def select_strategy(self) -> str:
        """``mm_vision_select_feature`` as vlmzoo's ``vision_feature_select_strategy``."""
        return self.choice(SELECT_FEATURE_STRATEGIES, "mm_vision_select_feature", "patch")

    @property
    def projector_type(self) -> str:
        return self.raw.get("mm_projector_type", "linear")

    @property
    def mm_hidden_size(self) -> int | None:
        return self.raw.get("mm_hidden_size")

    @property
    def vocab_size(self) -> int:
        value = self.require("vocab_size", "the language model's vocabulary size")
        if not isinstance(value, int) or value <= 0:
            raise self.error(f"vocab_size must be a positive integer, got {value!r}")
        return value

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.raw.get("tie_word_embeddings", False))

    @property
    def dtype(self) -> str | None:
        return self.raw.get("dtype") or self.raw.get("torch_dtype")

    def refuse_image_start_end(self) -> None:
        if self.raw.get("mm_use_im_start_end"):
            raise self.error("mm_use_im_start_end=True (image start/end tokens, LLaVA 1.0 variants) is not supported")

    def text_config(self, model_types: dict[str, str], vocab_size: int | None = None) -> PreTrainedConfig:
        """The LLM's config: the top-level fields minus the multimodal ones; ``model_types`` maps the fork's
        ``model_type`` (e.g. ``llava_mistral``) to the transformers LLM's (``mistral``)."""
        text_model_type = self.choice(model_types, "model_type")
        fields = {
            key: value
            for key, value in self.raw.items()
            if key not in NON_TEXT_KEYS and not key.startswith(NON_TEXT_PREFIXES)
        }
        try:
            config = AutoConfig.for_model(text_model_type, **fields)
        except (ValueError, TypeError) as error:
            raise self.error(f"the language model's fields do not make a {text_model_type} config: {error}") from None
        if vocab_size is not None:
            config.vocab_size = vocab_size
        return config

    def grid_pinpoints(self) -> list[list[int]]:
        """AnyRes pinpoints as [height, width]; the original lists them as (width, height)."""
        pinpoints = self.raw.get("image_grid_pinpoints")
        if isinstance(pinpoints, str):  # the original also accepts a Python literal, e.g. "[(336, 672), (672, 336)]"
            try:
                pinpoints = [list(pair) for pair in ast.literal_eval(pinpoints)]
            except (ValueError, SyntaxError, TypeError):
                raise self.error(f"image_grid_pinpoints {pinpoints!r} is not a list of (width, height) pairs") from None
        if not isinstance(pinpoints, list) or not pinpoints or any(len(pair) != 2 for pair in pinpoints):
            raise self.error(
                f"image_aspect_ratio 'anyres' needs image_grid_pinpoints as a list of [width, height] resolutions, "
                f"got {pinpoints!r}"
            )
        return [[int(height), int(width)] for width, height in pinpoints]


def check_feature_layer(layer: int | list[int], vision_config: PreTrainedConfig, what: str) -> None:
    """Refuse a feature layer the tower does not have (its hidden states are indexed -(depth+1) .. depth)."""
    depth = vision_config.num_hidden_layers
    layers = [layer] if isinstance(layer, int) else layer
    if not isinstance(layers, list) or not layers:
        raise ConversionError(f"{what} must be a layer index or a list of them, got {layer!r}")
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool) or not -(depth + 1) <= index <= depth:
            raise ConversionError(
                f"{what} {layer} is beyond the vision tower's depth: it has {depth} layers, so hidden states "
                f"{-(depth + 1)} .. {depth} exist"
            )


# ----- the image token ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageToken:
    """``<image>``'s id in the converted tokenizer and the vocabulary size the embeddings grow to."""

    token_id: int
    source_vocab_size: int
    vocab_size: int

    def grow_vocabulary(self, targets=GROWN_BY_IMAGE_TOKEN) -> TensorTransform:
        """A job's tensor transform: ``targets`` (embeddings, LM head) grow to ``vocab_size`` rows of the mean."""

        def grow(target: str, tensor: torch.Tensor) -> torch.Tensor:
            return grow_rows_with_mean(tensor, self.vocab_size) if target in targets else tensor

        return grow


def setup_image_token(tokenizer, source_vocab_size: int, notes: list[str]) -> ImageToken:
    """Give ``<image>`` an id: the tokenizer's, else add it (the original uses index -200, not a token); with no
    tokenizer, the first row after the vocabulary. The vocabulary grows to hold the id."""
    if tokenizer is None:
        token_id = source_vocab_size
        notes.append(f"no tokenizer in the input: {IMAGE_TOKEN} gets the new id {token_id}")
    else:
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if token_id is None or token_id == tokenizer.unk_token_id:
            tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
            token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
            notes.append(
                f"added {IMAGE_TOKEN} to the tokenizer as special token id {token_id} (the original uses index "
                f"{IMAGE_TOKEN_INDEX})"
            )
    vocab_size = max(source_vocab_size, token_id + 1)
    if vocab_size > source_vocab_size:
        notes.append(
            f"grew embed_tokens / lm_head from {source_vocab_size} to {vocab_size} rows (new rows: mean of the "
            f"existing ones)"
        )
    return ImageToken(token_id, source_vocab_size, vocab_size)


# ----- tokenizer ------------------------------------------------------------------------------------------
def prepare_tokenizer(tokenizer, notes: list[str], conversation: str = "vicuna_v1") -> str:
    """Set the pad token the fork's training used (unk) when missing; returns the chat template to save: the
    tokenizer's own, else the fork's ``conversation`` format."""
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # what LLaVA's training sets for the vicuna_v1 format
        notes.append(f"tokenizer had no pad token: set to {tokenizer.unk_token}")
    if tokenizer.chat_template is not None:
        return tokenizer.chat_template
    notes.append(f"chat template: the original {conversation} conversation format")
    return CHAT_TEMPLATES[conversation]


__all__ = [
    "CHAT_TEMPLATES",
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_INDEX",
    "ImageToken",
    "LANGUAGE_MODEL_RULES",
    "LlavaForkConfig",
    "PROJECTOR_RULES",
    "SELECT_FEATURE_STRATEGIES",
    "VICUNA_V1_CHAT_TEMPLATE",
    "check_feature_layer",
    "prepare_tokenizer",
    "setup_image_token",
]
