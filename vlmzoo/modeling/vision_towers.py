"""Vision towers built from transformers sub-configs, and the selection of their features.

Towers are ``AutoModel.from_config(vision_config)`` (CLIP, SigLIP, ...); nothing here re-implements a ViT.
Feature selection follows LLaVA: one hidden-state index or a list of them (concatenated along channels),
with the first (CLS) token dropped by the ``"default"`` strategy and kept by ``"full"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig

from ..registry import Registry

FEATURE_SELECT_STRATEGIES: Registry = Registry("vision_feature_select_strategy")
FEATURE_SELECT_STRATEGIES.register("default")(1)  # number of leading tokens dropped (the CLS token)
FEATURE_SELECT_STRATEGIES.register("full")(0)


def build_vision_tower(vision_config: PreTrainedConfig) -> nn.Module:
    """Instantiate the transformers vision model described by ``vision_config``."""
    return AutoModel.from_config(vision_config)


def tower_extra_tokens(vision_config: PreTrainedConfig) -> int:
    """Tokens the tower adds besides its patches: 1 for towers with a class embedding (CLIP), else 0 (SigLIP)."""
    with torch.device("meta"):
        tower = build_vision_tower(vision_config)
    return int(any(name.endswith("class_embedding") for name, _ in tower.named_parameters()))


def tokens_per_view(height: int, width: int, patch_size: int, extra_tokens: int, select_strategy: str) -> int:
    """Visual tokens of one (height, width) view after feature selection (LLaVA's count)."""
    dropped = FEATURE_SELECT_STRATEGIES.get(select_strategy)
    return (height // patch_size) * (width // patch_size) + extra_tokens - dropped


def num_feature_layers(feature_layer: int | Sequence[int]) -> int:
    return 1 if isinstance(feature_layer, int) else len(feature_layer)


def select_vision_features(
    hidden_states: Sequence[torch.Tensor], feature_layer: int | Sequence[int], select_strategy: str
) -> torch.Tensor:
    """Pick the tower's hidden state(s) the projector reads.

    hidden_states: per-layer tensors (num_views, tokens, width), embeddings first.
    Returns (num_views, tokens - dropped, width * num_feature_layers).
    """
    dropped = FEATURE_SELECT_STRATEGIES.get(select_strategy)
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    selected = [hidden_states[layer][:, dropped:] for layer in layers]
    return selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1)


def check_tower_views(pixel_values: torch.Tensor, channels: int, image_size: int) -> None:
    """``ValueError`` unless ``pixel_values`` is (num_views, channels, image_size, image_size)."""
    expected = (channels, image_size, image_size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(
            f"the vision tower takes views of shape (num_views, {channels}, {image_size}, {image_size}); got "
            f"{tuple(pixel_values.shape)}. Make pixel_values with the model's processor."
        )


def run_vision_tower(
    tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int | Sequence[int], select_strategy: str
) -> torch.Tensor:
    """Run ``tower`` on (num_views, 3, H, W) pixels and return the selected features."""
    # transformers' capture mechanism accepts the wanted layer index(es) in place of True, so only those
    # hidden states are kept alive
    wanted = feature_layer if isinstance(feature_layer, int) else list(feature_layer)
    outputs = tower(pixel_values.to(tower.dtype), output_hidden_states=wanted, return_dict=True)
    return select_vision_features(outputs.hidden_states, feature_layer, select_strategy)
