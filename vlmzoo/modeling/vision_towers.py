"""Vision towers built from transformers sub-configs, and the selection of their features.

Towers are ``AutoModel.from_config(vision_config)`` (CLIP, SigLIP, ConvNeXt, ...); nothing here
re-implements a ViT or a ConvNeXt. Feature selection follows LLaVA: one hidden-state index or a list of
them (concatenated along channels), with the first (CLS) token dropped by the ``"default"`` strategy and
kept by ``"full"``.

Blocks for the high-resolution families (LLaVA-HR, Mini-Gemini, FILA):

- ``run_vit_layerwise``: a transformers ViT run layer by layer with injection points after chosen layers
  (LLaVA-HR's MR-Adapters, FILA's CVFM).
- ``convnext_stage_feature_maps`` / ``convnext_stage_shapes``: every stage's map of a transformers ConvNeXt
  (Mini-Gemini's 4-stage aux features, FILA's per-stage fusion, LLaVA-HR's final stage).
- ``resample_position_embeddings`` / ``resize_vit_position_embeddings``: run a ViT at another resolution
  with a resampled position table (LLaVA-HR's 336 → 448 CLIP; transformers' ``interpolate_pos_encoding``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig

from ..configuration.configuration_base import check_feature_layers
from ..geometry import dropped_tokens, tower_extra_tokens
from ..registry import Registry


def build_vision_tower(vision_config: PreTrainedConfig) -> nn.Module:
    """Instantiate the transformers vision model described by ``vision_config``."""
    return AutoModel.from_config(vision_config)


def num_feature_layers(feature_layer: int | Sequence[int]) -> int:
    return 1 if isinstance(feature_layer, int) else len(feature_layer)


def select_vision_features(
    hidden_states: Sequence[torch.Tensor], feature_layer: int | Sequence[int], select_strategy: str
) -> torch.Tensor:
    """Pick the tower's hidden state(s) the projector reads.

    hidden_states: per-layer tensors (num_views, tokens, width), embeddings first.
    Returns (num_views, tokens - dropped, width * num_feature_layers).
    """
    dropped = dropped_tokens(select_strategy)
    # ValueError naming the valid range for a per-call override beyond the tower's depth (not an IndexError)
    if not isinstance(feature_layer, int) and not feature_layer:
        raise TypeError(f"vision_feature_layer must be an int or a non-empty list of ints, got {feature_layer!r}")
    layers = check_feature_layers(feature_layer, len(hidden_states) - 1)
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


# --------------------------------------------------------------------------------------------------------
# Layer-wise ViT with injection points (LLaVA-HR's MR-Adapters, FILA's CVFM)
# --------------------------------------------------------------------------------------------------------


class ViTParts(NamedTuple):
    """The pieces of a transformers ViT that ``run_vit_layerwise`` calls in turn."""

    embeddings: nn.Module  # pixels -> (B, tokens, width), position embeddings added
    pre_norm: nn.Module | None  # CLIP's ``pre_layrnorm``; None for towers without one (SigLIP)
    layers: nn.ModuleList  # the encoder layers, each (B, tokens, width) -> (B, tokens, width)


def vit_parts(tower: nn.Module) -> ViTParts:
    """Split a transformers ViT (``CLIPVisionModel``, ``SiglipVisionModel``) into embeddings, pre-norm, layers.

    The tower's post-layernorm / pooling head is not part of it: LLaVA-style models read hidden states.
    """
    embeddings = getattr(tower, "embeddings", None)
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(tower).__name__} is not a layer-wise runnable ViT: it needs `.embeddings` and `.encoder.layers` "
            "(as transformers' CLIPVisionModel and SiglipVisionModel have)"
        )
    pre_norm = getattr(tower, "pre_layrnorm", None)
    return ViTParts(embeddings, pre_norm, layers)


def _resolve_hidden_state_indices(indices: int | Sequence[int] | None, num_states: int) -> list[int]:
    """Non-negative hidden-state indices (transformers' convention: 0 = embeddings, i = after layer i)."""
    if indices is None:
        return list(range(num_states))
    requested = [indices] if isinstance(indices, int) else list(indices)
    if not requested:
        raise ValueError("hidden_state_indices is empty; ask for at least one hidden state")
    resolved = []
    for index in requested:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_states <= index < num_states:
            raise ValueError(
                f"hidden-state index {index!r} is out of range for a tower with {num_states} hidden states "
                f"(embeddings = 0, layer i = i; negative indices count from the end)"
            )
        resolved.append(index % num_states)
    return resolved


def _resolve_side_inputs(
    injections: Mapping[int, Callable[..., torch.Tensor]], side_inputs: Any, num_layers: int
) -> dict[int, tuple]:
    """Per injection point, the extra positional arguments its module is called with."""
    for layer in injections:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= num_layers:
            raise ValueError(
                f"injection point {layer!r} is not a layer index in [0, {num_layers}] (0 = after the embeddings, "
                f"i = after encoder layer i)"
            )
    if side_inputs is None:
        return {layer: () for layer in injections}
    if isinstance(side_inputs, Mapping):
        if set(side_inputs) != set(injections):
            raise ValueError(
                f"side_inputs given per layer must name exactly the injection points {sorted(injections)}; "
                f"got {sorted(side_inputs)}"
            )
        return {layer: (side_inputs[layer],) for layer in injections}
    return {layer: (side_inputs,) for layer in injections}


def run_vit_layerwise(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    hidden_state_indices: int | Sequence[int] | None = None,
    *,
    injections: Mapping[int, Callable[..., torch.Tensor]] | None = None,
    side_inputs: Any = None,
    interpolate_pos_encoding: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Run a transformers ViT layer by layer, calling injection modules between layers.

    Serves LLaVA-HR (MR-Adapters after layers n, 2n, 3n of the low-resolution CLIP, fed the ConvNeXt's
    final-stage map) and FILA (a CVFM after the last layer of each of 4 ViT stages, fed the matching
    ConvNeXt stage). Runs the embeddings, then CLIP's ``pre_layrnorm`` where the tower has one, then each
    encoder layer with no attention mask (as LLaVA-HR and the towers themselves do); never the post-norm.
    Layers go through the tower's own modules, so its attention implementation (eager / sdpa / flash) and
    gradient checkpointing apply.

    Args:
        tower: ``CLIPVisionModel`` / ``SiglipVisionModel`` (see ``vit_parts``).
        pixel_values: (B, C, H, W).
        hidden_state_indices: which hidden states to return, in transformers' ``hidden_states`` convention
            (0 = embeddings after the pre-norm, i = after layer i, negatives from the end); ``None`` = all.
            Layers after the last requested one are not run.
        injections: layer index i in [0, num_layers] -> module called after layer i (0: after the
            embeddings) as ``module(hidden_states)`` or ``module(hidden_states, side_input)``; its output,
            (B, tokens, width), replaces the hidden states the next layer sees and the one returned at i.
        side_inputs: ``None`` (injections take only the hidden states), a mapping with exactly the injection
            points as keys (one side input per point, e.g. FILA's per-stage ConvNeXt maps), or any other
            object given to every injection (e.g. LLaVA-HR's single ConvNeXt map).
        interpolate_pos_encoding: passed to the tower's embeddings (transformers' position interpolation).

    Returns:
        a tuple of (B, tokens, width) tensors, one per requested index, in the order requested.
    """
    parts = vit_parts(tower)
    num_layers = len(parts.layers)
    wanted = _resolve_hidden_state_indices(hidden_state_indices, num_layers + 1)
    injections = dict(injections or {})
    extra_arguments = _resolve_side_inputs(injections, side_inputs, num_layers)
    wanted_set = set(wanted)
    kept: dict[int, torch.Tensor] = {}

    def after(index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        if index in injections:
            hidden_states = injections[index](hidden_states, *extra_arguments[index])
        if index in wanted_set:
            kept[index] = hidden_states
        return hidden_states

    hidden_states = parts.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)  # (B, T, D)
    if parts.pre_norm is not None:
        hidden_states = parts.pre_norm(hidden_states)
    hidden_states = after(0, hidden_states)
    for index in range(1, max(wanted) + 1):
        hidden_states = parts.layers[index - 1](hidden_states, None)  # (B, T, D); no attention mask
        hidden_states = after(index, hidden_states)
    return tuple(kept[index] for index in wanted)


# --------------------------------------------------------------------------------------------------------
# Every stage of a ConvNeXt (Mini-Gemini's aux tower, FILA's hybrid encoder, LLaVA-HR's high-res path)
# --------------------------------------------------------------------------------------------------------


def convnext_stage_shapes(
    height: int, width: int, hidden_sizes: Sequence[int], patch_size: int = 4
) -> list[tuple[int, int, int]]:
    """(C_i, H_i, W_i) of each ConvNeXt stage's output for a (height, width) input.

    The stem is a patch_size-stride conv (4); stage 0 keeps that size and every later stage halves it
    (a 2×2 stride-2 conv), so stage i is at stride 4·2^i: 192/384/768/1536 channels at H/4 … H/32 for
    Mini-Gemini's ConvNeXt-L, whose final stage is LLaVA-HR's (1536, 32, 32) at 1024 px.
    """
    shapes = []
    stage_height, stage_width = height // patch_size, width // patch_size
    for stage, channels in enumerate(hidden_sizes):
        if stage > 0:
            stage_height, stage_width = stage_height // 2, stage_width // 2
        shapes.append((int(channels), stage_height, stage_width))
    return shapes


def convnext_stage_feature_maps(tower: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output map of a transformers ``ConvNextModel`` / ``ConvNextV2Model``.

    Serves Mini-Gemini (all 4 stages, resized to stage 0 and concatenated), FILA (stage k feeds CVFM k)
    and LLaVA-HR (the final stage). The tower's own forward with hidden states selected: transformers
    5.24 records the stem output at index 0 and stage i's output at index i + 1, and only indices
    1..num_stages are kept here. The pooled layernorm head is not applied to the maps (its pooled
    output is discarded).

    pixel_values: (B, C, H, W). Returns ``num_stages`` maps (B, hidden_sizes[i], H_i, W_i), see
    ``convnext_stage_shapes``.
    """
    num_stages = int(tower.config.num_stages)
    stage_indices = list(range(1, num_stages + 1))
    outputs = tower(pixel_values.to(tower.dtype), output_hidden_states=stage_indices, return_dict=True)
    hidden_states = outputs.hidden_states
    if hidden_states is None or len(hidden_states) != num_stages + 1:
        raise ValueError(
            f"{type(tower).__name__} did not return the stem + {num_stages} stage hidden states "
            "(expected a transformers ConvNextModel / ConvNextV2Model)"
        )
    maps = [hidden_states[index] for index in stage_indices]
    if any(stage_map is None for stage_map in maps):
        raise ValueError(f"{type(tower).__name__} did not return every stage's hidden state")
    return maps


# --------------------------------------------------------------------------------------------------------
# Position-embedding resampling (LLaVA-HR's 336 → 448 CLIP; transformers' interpolate_pos_encoding)
# --------------------------------------------------------------------------------------------------------

# key -> fn(grid (1, D, h0, w0), size (h, w)) -> (1, D, h, w)
POSITION_INTERPOLATIONS: Registry = Registry("position-embedding interpolation")


@POSITION_INTERPOLATIONS.register("bicubic_antialias")
def _interpolate_bicubic_antialias(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """LLaVA-HR's official resampling: bicubic with antialias (PIL-like a = -0.5 kernel), computed in fp32."""
    resized = F.interpolate(grid.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return resized.to(grid.dtype)


@POSITION_INTERPOLATIONS.register("bicubic")
def _interpolate_bicubic(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """transformers' ``interpolate_pos_encoding`` (CLIP, SigLIP): plain bicubic in the table's dtype."""
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False)


def _check_grid(target_grid: int | Sequence[int]) -> tuple[int, int]:
    sides = (target_grid, target_grid) if isinstance(target_grid, int) else target_grid
    valid = isinstance(sides, (list, tuple)) and len(sides) == 2
    valid = valid and all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides)
    if not valid:
        raise ValueError(
            f"target_grid must be a positive integer (a square grid of patches per side) or a (height, width) "
            f"pair of positive integers; got {target_grid!r}"
        )
    return (sides[0], sides[1])


def resample_position_embeddings(
    table: torch.Tensor, target_grid: int | Sequence[int], *, mode: str, num_prefix_tokens: int
) -> torch.Tensor:
    """Resample a square ViT position table to ``target_grid`` patches, prefix (class) rows kept as they are.

    Serves LLaVA-HR (CLIP-L/14-336 run at 448: 24×24 → 32×32, ``mode="bicubic_antialias"``, its official
    way) and any tower run the transformers way (``mode="bicubic"``: exactly what CLIP's / SigLIP's
    ``interpolate_pos_encoding`` computes). A target equal to the source grid returns the table unchanged
    (a copy), as both references do.

    Args:
        table: (num_prefix_tokens + g·g, D), e.g. ``embeddings.position_embedding.weight``.
        target_grid: patches per side (int) or (height, width) in patches.
        mode: a key of ``POSITION_INTERPOLATIONS``.
        num_prefix_tokens: rows before the patch rows (CLIP 1, SigLIP 0; see ``tower_extra_tokens``).

    Returns:
        (num_prefix_tokens + h·w, D).
    """
    height, width = _check_grid(target_grid)
    interpolate = POSITION_INTERPOLATIONS.get(mode)
    if table.dim() != 2:
        raise ValueError(f"the position table must be (positions, width); got shape {tuple(table.shape)}")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be a non-negative integer, got {num_prefix_tokens!r}")
    num_patches = table.shape[0] - num_prefix_tokens
    side = int(round(max(num_patches, 0) ** 0.5))
    if num_patches <= 0 or side * side != num_patches:
        raise ValueError(
            f"the position table has {table.shape[0]} rows; after {num_prefix_tokens} prefix rows the "
            f"{num_patches} patch rows do not form a square grid"
        )
    if (height, width) == (side, side):
        return table.clone()
    dim = table.shape[1]
    prefix, patches = table[:num_prefix_tokens], table[num_prefix_tokens:]  # (P, D), (g·g, D)
    grid = patches.unsqueeze(0).reshape(1, side, side, dim)  # (g·g, D) -> (1, g, g, D)
    grid = grid.permute(0, 3, 1, 2)  # (1, g, g, D) -> (1, D, g, g)
    resized = interpolate(grid, (height, width))  # (1, D, h, w)
    resized = resized.permute(0, 2, 3, 1).reshape(height * width, dim)  # (1, D, h, w) -> (h·w, D)
    return torch.cat([prefix, resized], dim=0)  # (P + h·w, D)


def resize_vit_position_embeddings(
    tower: nn.Module, image_size: int, *, mode: str, num_prefix_tokens: int | None = None
) -> nn.Module:
    """Make a transformers ViT (CLIP, SigLIP) run at ``image_size`` with a resampled position table, in place.

    Serves LLaVA-HR's low-resolution path (CLIP-L/14-336 at 448, ``mode="bicubic_antialias"``). Replaces
    ``embeddings.position_embedding`` by an embedding holding ``resample_position_embeddings`` of the
    current table, and updates ``position_ids``, ``num_patches``, ``num_positions``, ``image_size`` and
    ``tower.config.image_size`` (the sub-config the tower wraps), so ``tower(pixels_at_image_size)`` works
    without ``interpolate_pos_encoding=True`` and the tower saves / reloads at the new size.

    The resampling is done once here; LLaVA-HR resamples its 24×24 table on every forward, which is the
    same function of the weights but trains the 24×24 table instead of the resampled one.

    Args:
        tower: a ``CLIPVisionModel`` / ``SiglipVisionModel``.
        image_size: the new square input size in pixels; a positive multiple of the patch size.
        mode: a key of ``POSITION_INTERPOLATIONS``.
        num_prefix_tokens: rows before the patch rows; default ``tower_extra_tokens(tower.config)``.

    Returns:
        the same tower.
    """
    embeddings = tower.embeddings
    patch_size = int(embeddings.patch_size)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % patch_size:
        raise ValueError(
            f"image_size must be a positive multiple of the patch size {patch_size}; got {image_size!r}"
        )
    prefix = tower_extra_tokens(tower.config) if num_prefix_tokens is None else num_prefix_tokens
    grid = image_size // patch_size
    old = embeddings.position_embedding.weight
    with torch.no_grad():
        table = resample_position_embeddings(old.detach(), grid, mode=mode, num_prefix_tokens=prefix)  # (P+g², D)
    new_embedding = nn.Embedding(table.shape[0], table.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        new_embedding.weight.copy_(table)
    new_embedding.weight.requires_grad_(old.requires_grad)
    embeddings.position_embedding = new_embedding
    # assigning to the registered (non-persistent) buffer keeps it a non-persistent buffer
    embeddings.position_ids = torch.arange(table.shape[0], device=old.device).expand((1, -1))  # (1, P + g²)
    embeddings.num_patches = grid * grid
    embeddings.num_positions = table.shape[0]
    embeddings.image_size = image_size
    tower.config.image_size = image_size
    embeddings_config = getattr(embeddings, "config", None)
    if embeddings_config is not None and embeddings_config is not tower.config:
        embeddings_config.image_size = image_size
    return tower
