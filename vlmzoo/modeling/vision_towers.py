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
Several towers (docs/design.md §4: ``aux_vision_config``, ``vision_configs``) and their views:

- ``build_tower`` / ``build_vision_towers``: one tower, or a ``nn.ModuleDict`` of named experts (EAGLE, LEO), each
  ``AutoModel.from_config``; an attention-free tower (ConvNeXt) accepts every attention implementation, and the
  experts' container (``VisionTowers``) passes on what transformers gathers from sub-models (``_no_split_modules``,
  tied keys, parallel plans).
- ``ViewSpec`` / ``derive_view``: each tower's input derived from the one high-resolution ``pixel_values`` tensor
  (LLaVA-HR's and Mini-Gemini's low-resolution ViT view, EAGLE's per-expert views): a resize with a named mode of
  ``RESIZE_MODES`` (``resize_maps``) and a re-normalisation from the processor's mean/std to the tower's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig
from transformers.utils import is_torchdynamo_compiling

from ..configuration.configuration_base import check_feature_layers
from ..geometry import dropped_tokens, tower_extra_tokens
from ..registry import Registry


def build_vision_tower(vision_config: PreTrainedConfig) -> nn.Module:
    """Instantiate the transformers vision model described by ``vision_config``."""
    return AutoModel.from_config(vision_config)


def floating_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a transformers model reports as ``.dtype`` (its first floating-point parameter, module tree in
    pre-order), read from the modules' own parameter dicts: ``.dtype`` builds a generator chain over every parameter
    (~4 us per image call, where towers and Q-Formers cast their inputs to it); under compile, ``.dtype`` itself."""
    if is_torchdynamo_compiling():
        return module.dtype
    pending = [module]
    while pending:
        current = pending.pop()
        for parameter in current._parameters.values():
            if parameter is not None and parameter.is_floating_point():
                return parameter.dtype
        pending.extend(child for child in reversed(current._modules.values()) if child is not None)
    return module.dtype  # no floating-point parameter: as transformers answers


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


# --------------------------------------------------------------------------------------------------------
# Several towers: a high-resolution branch, a named mapping of experts (LLaVA-HR, Mini-Gemini, FILA, EAGLE, LEO)
# --------------------------------------------------------------------------------------------------------

# vision model types without attention layers: every attention implementation runs them the same
ATTENTION_FREE_TOWERS: frozenset[str] = frozenset({"convnext", "convnextv2", "resnet"})
_ATTENTION_SUPPORT_FLAGS = ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn")


def build_tower(config: PreTrainedConfig) -> nn.Module:
    """``AutoModel.from_config(config)``; a tower of ``ATTENTION_FREE_TOWERS`` accepts any attention implementation.

    transformers refuses ``attn_implementation="sdpa"`` for a ConvNeXt (``_supports_sdpa`` is False: it has no
    attention at all), so a composite model holding one could neither be loaded with
    ``from_pretrained(attn_implementation="sdpa")`` nor switched with ``set_attn_implementation("sdpa")``. Such a
    tower is built with the implementation left to transformers, then records the requested one and declares the
    backends supported (instance flags: nothing in it reads them), so the composite's choice reaches it as it reaches
    the attention towers.
    """
    if getattr(config, "model_type", None) not in ATTENTION_FREE_TOWERS:
        return AutoModel.from_config(config)
    requested = config._attn_implementation
    config._attn_implementation_internal = None  # a ConvNeXt config has no sub-configs to reach
    tower = AutoModel.from_config(config)
    for flag in _ATTENTION_SUPPORT_FLAGS:
        setattr(tower, flag, True)
    if requested is not None:
        tower.config._attn_implementation_internal = requested
    return tower


# what a transformers model's post_init gathers from its direct children (transformers 5.24 `PreTrainedModel.post_init`
# and `init_parallel_plans`): sets merged as they are, and mappings / sets whose entries name modules by path
_GATHERED_SETS = (
    "_no_split_modules", "_keep_in_fp32_modules", "_keep_in_fp32_modules_strict", "_skip_keys_device_placement",
    "_keys_to_ignore_on_load_unexpected", "_keys_to_ignore_on_load_missing",
)  # fmt: skip
_GATHERED_PLANS = ("_tp_plan", "_ep_plan", "_pp_plan", "_fsdp_plan")


class VisionTowers(nn.ModuleDict):
    """Named experts (``vision_towers.<name>``), holding what transformers gathers from a model's children.

    transformers' ``post_init`` reads ``_no_split_modules``, the fp32 / device-placement / load-key sets, the tied
    keys and the parallel plans from each *direct* child of a model; experts inside a ``ModuleDict`` are its
    grandchildren, so this container gathers them from its members (paths prefixed with the member's name), and
    the model holding it then sees them as it sees a single tower's.
    """

    def __init__(self, towers: Mapping[str, nn.Module]):
        super().__init__(towers)
        for attribute in _GATHERED_SETS:
            setattr(self, attribute, set().union(*(getattr(t, attribute, None) or () for t in self.values())))
        self.all_tied_weights_keys = {
            f"{name}.{target}": f"{name}.{source}"
            for name, tower in self.items()
            for target, source in (getattr(tower, "all_tied_weights_keys", None) or {}).items()
        }
        self._keys_to_ignore_on_save = {
            f"{name}.{key}" for name, tower in self.items() for key in getattr(tower, "_keys_to_ignore_on_save", None) or ()
        }
        for attribute in _GATHERED_PLANS:
            plans = {
                f"{name}.{key}": style
                for name, tower in self.items()
                for key, style in (getattr(tower, attribute, None) or {}).items()
            }
            setattr(self, attribute, plans)


def build_vision_towers(configs: Mapping[str, PreTrainedConfig]) -> VisionTowers:
    """The experts of ``vision_configs`` (each ``build_tower``) as a ``nn.ModuleDict`` in the mapping's order (keys
    ``<name>.*``): a :class:`VisionTowers`, which passes on what transformers gathers from sub-models.

    Names come checked by the config (module-name identifiers); a name that is an attribute of ``nn.ModuleDict``
    (``keys``, ``items``, ``type``, ...) cannot be a key and is refused here with a ``ValueError``.
    """
    if not isinstance(configs, Mapping) or not configs:
        raise ValueError(f"build_vision_towers needs a non-empty mapping name -> vision config, got {configs!r:.80}")
    clashing = [name for name in configs if hasattr(nn.ModuleDict, name)]
    if clashing:
        raise ValueError(
            f"expert names {clashing} are attributes of nn.ModuleDict and cannot name a module; rename them "
            f"(e.g. '{clashing[0]}_tower')"
        )
    return VisionTowers({name: build_tower(config) for name, config in configs.items()})


# --------------------------------------------------------------------------------------------------------
# Views: each tower's input derived from the one pixel tensor (LLaVA-HR, Mini-Gemini, EAGLE)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeMode:
    """One resize mode: the ``torch.nn.functional.interpolate`` mode, and whether it interpolates (then it takes
    ``antialias`` and ``align_corners``; nearest-neighbour modes take neither)."""

    torch_mode: str
    interpolates: bool


RESIZE_MODES: Registry = Registry("resize mode")
RESIZE_MODES.register("nearest")(ResizeMode("nearest", interpolates=False))  # torch's floor(i * scale)
# the source pixel under the output pixel's centre, floor((i + 0.5) * scale) (PIL's NEAREST convention)
RESIZE_MODES.register("nearest-exact")(ResizeMode("nearest-exact", interpolates=False))
RESIZE_MODES.register("bilinear")(ResizeMode("bilinear", interpolates=True))
RESIZE_MODES.register("bicubic")(ResizeMode("bicubic", interpolates=True))  # a=-0.75; with antialias PIL's a=-0.5


def check_resize(mode: str, antialias: bool = False, align_corners: bool | None = None) -> ResizeMode:
    """The ``ResizeMode`` of ``mode``; ``ValueError`` for an unknown mode (naming the valid ones) and for
    ``antialias`` / ``align_corners`` with a nearest-neighbour mode, which has no filter and no sample grid to align."""
    resize = RESIZE_MODES.get(mode)
    if not isinstance(antialias, bool):
        raise TypeError(f"antialias must be True or False, got {antialias!r}")
    if align_corners is not None and not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be True, False or None, got {align_corners!r}")
    interpolating = [key for key in RESIZE_MODES if RESIZE_MODES.get(key).interpolates]
    if not resize.interpolates and align_corners is not None:
        raise ValueError(
            f"align_corners={align_corners} is refused with mode '{mode}': a nearest-neighbour resize has no "
            f"interpolation grid to align; leave align_corners=None, or use one of {interpolating}"
        )
    if not resize.interpolates and antialias:
        raise ValueError(
            f"antialias=True is refused with mode '{mode}': a nearest-neighbour resize has no filter to widen; use "
            f"one of {interpolating} for an antialiased resize"
        )
    return resize


def _check_size(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    sides = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    valid = isinstance(sides, (list, tuple)) and len(sides) == 2
    valid = valid and all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides)
    if not valid:
        raise ValueError(f"{name} must be a positive integer or a (height, width) pair of them; got {size!r}")
    return (int(sides[0]), int(sides[1]))


def resize_maps(
    maps: torch.Tensor,
    size: int | Sequence[int],
    mode: str,
    antialias: bool = False,
    align_corners: bool | None = None,
) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width) with ``F.interpolate`` in a mode of ``RESIZE_MODES``.

    Exactly ``F.interpolate(maps, size, mode=..., antialias=..., align_corners=...)`` for float32 / float64 maps;
    half-precision maps are resized in float32 and returned in their dtype (CPU kernels lack some half modes). A map
    already at ``size`` is returned as it is (every mode is the identity there).
    """
    height, width = _check_size(size)
    resize = check_resize(mode, antialias, align_corners)
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"resize_maps takes (batch, channels, height, width) maps; got {shape}")
    if tuple(maps.shape[-2:]) == (height, width):
        return maps
    options = {"antialias": antialias, "align_corners": align_corners} if resize.interpolates else {}
    compute = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    resized = F.interpolate(compute, size=(height, width), mode=resize.torch_mode, **options)
    return resized.to(maps.dtype)


def _statistics(values: Sequence[float], name: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of numbers (one per channel), got {values!r}")
    numbers = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must hold finite numbers (one per channel), got {values!r}")
        numbers.append(float(value))
    return tuple(numbers)


def _check_mean_std(mean: Sequence[float], std: Sequence[float], owner: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = _statistics(mean, f"{owner} mean"), _statistics(std, f"{owner} std")
    if len(mean) != len(std):
        raise ValueError(f"{owner} mean has {len(mean)} channels but its std {len(std)}; give one of each per channel")
    if not all(value > 0 for value in std):
        raise ValueError(f"{owner} std must be positive in every channel, got {std}")
    return mean, std


@dataclass(frozen=True, kw_only=True)
class ViewSpec:
    """How one tower sees the processor's pixels: its input size, the resize, and its own normalisation.

    Attributes:
        size: the tower's input (height, width) in pixels; an int is a square.
        mode: a key of ``RESIZE_MODES`` (``nearest``, ``nearest-exact``, ``bilinear``, ``bicubic``).
        antialias: low-pass filter when downsizing (bilinear / bicubic only; torch's antialiased bicubic is PIL's).
        align_corners: as ``F.interpolate`` takes it (``True`` in LLaVA-HR's and EAGLE's official resizes); ``None``
            for nearest-neighbour modes, which refuse it.
        mean, std: the tower's per-channel normalisation (e.g. CLIP's, SigLIP's 0.5, ConvNeXt's ImageNet statistics).
    """

    size: int | tuple[int, int]
    mode: str = "bilinear"
    antialias: bool = False
    align_corners: bool | None = None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "size", _check_size(self.size, "ViewSpec size"))
        check_resize(self.mode, self.antialias, self.align_corners)
        mean, std = _check_mean_std(self.mean, self.std, "the view's")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


def derive_view(
    pixel_values: torch.Tensor, source_mean: Sequence[float], source_std: Sequence[float], spec: ViewSpec
) -> torch.Tensor:
    """One tower's input from the processor's normalised pixels: resize to ``spec.size``, then re-normalise.

    Serves LLaVA-HR (the 448 ViT view of the 1024 image, bilinear ``align_corners=True``), Mini-Gemini (the 336 view
    of the aux-size image) and EAGLE (each expert's view of the padded 1024 image). The processor normalised the
    pixels p as x = (p - source_mean) / source_std; the tower wants (p - spec.mean) / spec.std, which is
    x * source_std / spec.std + (source_mean - spec.mean) / spec.std per channel. Resizing first is exact: every mode's
    weights sum to one per output pixel, so the resize commutes with that per-channel affine map. With equal
    statistics the view is the resize alone.

    Args:
        pixel_values: (B, C, H, W) floating pixels, normalised with ``source_mean`` / ``source_std``.
        source_mean, source_std: the processor's ``image_mean`` / ``image_std`` (C values each).
        spec: the tower's ``ViewSpec`` (C values of mean and std).

    Returns:
        (B, C, *spec.size) in ``pixel_values``' dtype.
    """
    if not isinstance(spec, ViewSpec):
        raise TypeError(f"spec must be a ViewSpec, got {type(spec).__name__}")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"derive_view takes pixel_values of shape (batch, channels, height, width); got {shape}")
    if not pixel_values.is_floating_point():
        raise TypeError(f"derive_view takes floating-point (normalised) pixel_values, got dtype {pixel_values.dtype}")
    source_mean, source_std = _check_mean_std(source_mean, source_std, "the processor's")
    channels = pixel_values.shape[1]
    if channels != len(source_mean) or channels != len(spec.mean):
        raise ValueError(
            f"pixel_values of shape {tuple(pixel_values.shape)} have {channels} channels, but the processor's "
            f"statistics have {len(source_mean)} and the view's {len(spec.mean)}; give one mean and std per channel "
            f"(3 for RGB)"
        )
    view = resize_maps(pixel_values, spec.size, spec.mode, spec.antialias, spec.align_corners)  # (B, C, h, w)
    if (source_mean, source_std) == (spec.mean, spec.std):
        return view
    scale = [s / t for s, t in zip(source_std, spec.std)]
    shift = [(m - t) / d for m, t, d in zip(source_mean, spec.mean, spec.std)]
    scale = torch.tensor(scale, dtype=view.dtype, device=view.device).view(1, channels, 1, 1)
    shift = torch.tensor(shift, dtype=view.dtype, device=view.device).view(1, channels, 1, 1)
    return view * scale + shift
