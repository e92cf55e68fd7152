"""Projector registry: the modules that map vision features to the language model's width.

LLaVA 1.0 uses one linear layer, LLaVA 1.5 ``mlp2x_gelu`` (Linear -> GELU -> Linear). Their layers carry
transformers' native names (``linear_1``, ``act``, ``linear_2``, as ``LlavaMultiModalProjector``), so
transformers' checkpoints and tests address them directly; converters rename the original LLaVA's
``mm_projector.{0,2}``. The zoo adds InternVL's ``ln_mlp`` and ``pixel_shuffle``, Honeybee's
``c_abstractor``, MobileVLM's ``ldp`` and a Flamingo-style ``perceiver`` resampler.

Every projector takes (views, tokens, in_features) and returns (views, output tokens, out_features). Its
options are keyword arguments (``projector_config`` of the model config) and its output token count is
declared in the torch-free ``vlmzoo.geometry`` (the processor counts image tokens from there):
this module checks at import that both registries list the same projectors with the same option
defaults, and every forward checks the output length against the declared count.
"""

from __future__ import annotations

import inspect
import math
from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..geometry import PROJECTOR_TOKENS, projector_options, square_grid_side
from ..registry import Registry

PROJECTORS: Registry = Registry("projector")

# constructor arguments every projector takes; everything else is an option of `projector_config`
_COMMON_ARGUMENTS = ("in_features", "out_features", "bias")


def _register(key: str):
    """Register a projector class under ``key`` and tell it its key (for options and token counts)."""

    def decorator(cls: type[ZooProjector]) -> type[ZooProjector]:
        cls.projector_type = key
        return PROJECTORS.register(key)(cls)

    return decorator


class ZooProjector(nn.Module):
    """Base of the registered projectors: validated options, declared token count, checked output length.

    Subclasses call ``super().__init__(**options)`` and implement ``project(features)``.
    """

    projector_type: ClassVar[str] = ""

    def __init__(self, **options):
        super().__init__()
        self.options = projector_options(self.projector_type, options)

    def num_output_tokens(self, num_tokens: int) -> int:
        """Tokens this projector makes from ``num_tokens`` input tokens (``ValueError`` if they do not fit)."""
        return PROJECTOR_TOKENS.get(self.projector_type).count(int(num_tokens), self.options)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (views, tokens, in_features) -> (views, num_output_tokens(tokens), out_features)."""
        expected = self.num_output_tokens(features.shape[-2])  # clear ValueError for a grid that does not fit
        projected = self.project(features)
        if projected.shape[-2] != expected:
            raise RuntimeError(
                f"projector '{self.projector_type}' made {projected.shape[-2]} tokens from {features.shape[-2]}, but "
                f"vlmzoo.geometry declares {expected}: the two registries disagree"
            )
        return projected


def _to_grid(features: torch.Tensor, side: int) -> torch.Tensor:
    """(views, side * side, channels) tokens in raster order -> (views, channels, side, side) map."""
    views, _, channels = features.shape
    return features.transpose(1, 2).reshape(views, channels, side, side)


def _to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(views, channels, height, width) map -> (views, height * width, channels) tokens in raster order."""
    return grid.flatten(2).transpose(1, 2)


# ----- LLaVA --------------------------------------------------------------------------------------------
@_register("linear")
class LinearProjector(ZooProjector):
    """LLaVA 1.0 (Liu et al., "Visual Instruction Tuning", 2023): one ``Linear(in -> out)`` named ``linear_1``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(features)


@_register("mlp2x_gelu")
class MlpGeluProjector(ZooProjector):
    """LLaVA 1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023):
    ``linear_1 (in -> out) -> act (GELU) -> linear_2 (out -> out)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


# ----- InternVL -----------------------------------------------------------------------------------------
@_register("ln_mlp")
class LayerNormMlpProjector(ZooProjector):
    """InternVL's ``mlp1`` (Chen et al., "InternVL: Scaling up Vision Foundation Models and Aligning for Generic
    Visual-Linguistic Tasks", CVPR 2024): ``norm (LayerNorm(in)) -> linear_1 (in -> out) -> act (GELU) ->
    linear_2 (out -> out)``, token by token (count unchanged).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, layer_norm_eps: float = 1e-5):
        super().__init__(layer_norm_eps=layer_norm_eps)
        self.norm = nn.LayerNorm(in_features, eps=layer_norm_eps)
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.norm(features))))


def pixel_shuffle(features: torch.Tensor, ratio: int) -> torch.Tensor:
    """Space-to-depth on the square token grid: every ``ratio x ratio`` block of tokens becomes one token.

    features: (views, side * side, C) in raster order; returns (views, (side / ratio)^2, ratio^2 * C) in raster
    order of the blocks. Block token (di, dj) of block (i, j) — input token (i * ratio + di, j * ratio + dj) —
    fills channels ``[(di * ratio + dj) * C, (di * ratio + dj + 1) * C)``: InternVL's ``pixel_shuffle``
    (``ps_version="v2"``) order.
    """
    views, tokens, channels = features.shape
    side = square_grid_side(tokens, "pixel_shuffle")
    blocks = side // ratio
    # (views, side*side, C) -> (views, blocks, ratio, blocks, ratio, C)   [i, di, j, dj, c]
    grid = features.reshape(views, blocks, ratio, blocks, ratio, channels)
    # -> (views, blocks, blocks, ratio, ratio, C)   [i, j, di, dj, c]
    grid = grid.permute(0, 1, 3, 2, 4, 5)
    # -> (views, blocks*blocks, ratio*ratio*C)
    return grid.reshape(views, blocks * blocks, ratio * ratio * channels)


@_register("pixel_shuffle")
class PixelShuffleProjector(ZooProjector):
    """InternVL 1.5's token reduction (Chen et al., "How Far Are We to GPT-4V? Closing the Gap to Commercial
    Multimodal Models with Open-Source Suites", 2024): pixel shuffle of the square token grid by ``ratio``
    (tokens / ratio^2, channels x ratio^2; InternVL uses ratio 2: 1024 -> 256 tokens), then ``mlp1``:
    ``norm (LayerNorm) -> linear_1 -> act (GELU) -> linear_2``.

    Options: ``ratio`` (any integer >= 1 that divides the grid side), ``layer_norm_eps``.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, ratio: int = 2, layer_norm_eps: float = 1e-5
    ):
        super().__init__(ratio=ratio, layer_norm_eps=layer_norm_eps)
        self.ratio = ratio
        merged = in_features * ratio * ratio
        self.norm = nn.LayerNorm(merged, eps=layer_norm_eps)
        self.linear_1 = nn.Linear(merged, out_features, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        merged = pixel_shuffle(features, self.ratio)  # (views, tokens / ratio^2, in * ratio^2)
        return self.linear_2(self.act(self.linear_1(self.norm(merged))))


# ----- convolutional building blocks (Honeybee, MobileVLM) -------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (batch, channels, height, width) map, at every position."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H, W, C), normalise C, -> (B, C, H, W)
        return super().forward(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNormAct(nn.Module):
    """``conv`` (k x k, "same" padding k // 2, no bias) -> ``norm`` (LayerNorm2d) -> ``act`` (optional)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: nn.Module | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.norm = LayerNorm2d(out_channels)
        self.act = act if act is not None else nn.Identity()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(grid)))


class SqueezeExcitation(nn.Module):
    """Channel gate (Hu et al., "Squeeze-and-Excitation Networks", 2018):
    ``x * gate(fc_2(act(fc_1(mean over H, W of x))))`` with 1x1 convolutions ``fc_1`` / ``fc_2``."""

    def __init__(self, channels: int, squeeze_channels: int, act: nn.Module, gate: nn.Module):
        super().__init__()
        self.fc_1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = act
        self.fc_2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, 1, 1) channel means -> (B, C, 1, 1) gates, broadcast over H, W
        scale = self.gate(self.fc_2(self.act(self.fc_1(grid.mean(dim=(2, 3), keepdim=True)))))
        return grid * scale


class RegNetBottleneck(nn.Module):
    """RegNet bottleneck (Radosavovic et al., "Designing Network Design Spaces", 2020) as Honeybee builds it
    (bottleneck ratio 1, group size 1, squeeze-excitation 0.25 of the input width, SiLU, LayerNorm):

    ``conv_1`` (1x1) -> ``conv_2`` (3x3 depthwise) -> ``squeeze_excitation`` -> ``conv_3`` (1x1, no act), plus
    ``shortcut`` (1x1 conv + norm when the width changes, else identity), then SiLU.
    """

    def __init__(self, in_channels: int, out_channels: int, se_ratio: float = 0.25):
        super().__init__()
        self.conv_1 = ConvNormAct(in_channels, out_channels, 1, act=nn.SiLU())
        self.conv_2 = ConvNormAct(out_channels, out_channels, 3, groups=out_channels, act=nn.SiLU())
        squeeze = max(1, int(round(in_channels * se_ratio)))
        self.squeeze_excitation = SqueezeExcitation(out_channels, squeeze, nn.SiLU(), nn.Sigmoid())
        self.conv_3 = ConvNormAct(out_channels, out_channels, 1)
        self.shortcut = ConvNormAct(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        residual = self.conv_3(self.squeeze_excitation(self.conv_2(self.conv_1(grid))))
        return self.act(residual + self.shortcut(grid))


# ----- Honeybee -----------------------------------------------------------------------------------------
@_register("c_abstractor")
class CAbstractorProjector(ZooProjector):
    """Honeybee's C-Abstractor (Cha et al., "Honeybee: Locality-enhanced Projector for Multimodal LLM", CVPR 2024).

    The square token grid goes through ``stage_1`` (``depth`` RegNet bottlenecks, in -> hidden), ``pool``
    (adaptive average pooling to a sqrt(num_queries) square: ``num_queries`` tokens), ``stage_2`` (``depth``
    bottlenecks) and the readout MLP ``readout_1`` (hidden -> out) -> ``readout_act`` (SiLU) -> ``readout_2``
    (Honeybee's ``mlp_depth=2``). Honeybee's learned input position embedding is left out (it would fix the
    input token count). Options: ``num_queries`` (a perfect square), ``depth``, ``hidden_size`` (None: in_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        num_queries: int = 144,
        depth: int = 3,
        hidden_size: int | None = None,
    ):
        super().__init__(num_queries=num_queries, depth=depth, hidden_size=hidden_size)
        hidden = hidden_size or in_features
        self.stage_1 = nn.Sequential(
            *(RegNetBottleneck(in_features if index == 0 else hidden, hidden) for index in range(depth))
        )
        self.pool = nn.AdaptiveAvgPool2d(math.isqrt(num_queries))
        self.stage_2 = nn.Sequential(*(RegNetBottleneck(hidden, hidden) for _ in range(depth)))
        self.readout_1 = nn.Linear(hidden, out_features, bias=bias)
        self.readout_act = nn.SiLU()
        self.readout_2 = nn.Linear(out_features, out_features, bias=bias)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        side = square_grid_side(features.shape[1], self.projector_type)
        grid = _to_grid(features, side)  # (views, in, side, side)
        grid = self.stage_1(grid)  # (views, hidden, side, side)
        grid = self.pool(grid)  # (views, hidden, q, q), q = sqrt(num_queries)
        grid = self.stage_2(grid)  # (views, hidden, q, q)
        queries = _to_tokens(grid)  # (views, num_queries, hidden)
        return self.readout_2(self.readout_act(self.readout_1(queries)))


# ----- MobileVLM ----------------------------------------------------------------------------------------
def _make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: nearest multiple of ``divisor``, at least ``divisor``, never 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileInvertedResidual(nn.Module):
    """MobileNetV3's inverted residual without expansion (Howard et al., "Searching for MobileNetV3", 2019), with
    LayerNorm as MobileVLM uses it: ``depthwise`` (3x3, ``stride``, LayerNorm, Hardswish) ->
    ``squeeze_excitation`` (ReLU, Hardsigmoid gate) -> ``pointwise`` (1x1, LayerNorm), plus the input when stride is 1.
    """

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.depthwise = ConvNormAct(channels, channels, 3, stride=stride, groups=channels, act=nn.Hardswish())
        self.squeeze_excitation = SqueezeExcitation(
            channels, _make_divisible(channels // 4, 8), nn.ReLU(), nn.Hardsigmoid()
        )
        self.pointwise = ConvNormAct(channels, channels, 1)
        self.use_residual = stride == 1

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        out = self.pointwise(self.squeeze_excitation(self.depthwise(grid)))
        return out + grid if self.use_residual else out


@_register("ldp")
class LdpProjector(ZooProjector):
    """MobileVLM's Lightweight Downsample Projector (Chu et al., "MobileVLM: A Fast, Strong and Open Vision Language
    Assistant for Mobile Devices", 2023).

    Pointwise MLP ``linear_1 (in -> out) -> act (GELU) -> linear_2 (out -> out)`` on every token, then on the
    square grid ``block_1`` (depthwise 3x3, stride 1, residual) and ``block_2`` (depthwise 3x3, stride 2): the side
    becomes ceil(side / 2) (a 3x3 stride-2 convolution with padding 1; odd sides round up), so an even grid keeps
    1/4 of its tokens (MobileVLM: 576 -> 144). No options.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)
        self.block_1 = MobileInvertedResidual(out_features, stride=1)
        self.block_2 = MobileInvertedResidual(out_features, stride=2)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        side = square_grid_side(features.shape[1], self.projector_type)
        tokens = self.linear_2(self.act(self.linear_1(features)))  # (views, side*side, out)
        grid = _to_grid(tokens, side)  # (views, out, side, side)
        grid = self.block_2(self.block_1(grid))  # (views, out, ceil(side/2), ceil(side/2))
        return _to_tokens(grid)  # (views, ceil(side/2)^2, out)


# ----- Flamingo -----------------------------------------------------------------------------------------
def eager_cross_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling) v without a mask. query (B, heads, L, d), key / value (B, heads, S, d);
    returns (B, L, heads, d) and the (B, heads, L, S) weights, as transformers' attention functions do."""
    weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * scaling, dim=-1, dtype=torch.float32)
    weights = nn.functional.dropout(weights.to(query.dtype), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class PerceiverCrossAttention(nn.Module):
    """Latents attend to [features; latents] (Flamingo's ``PerceiverAttention``), through transformers'
    attention interface (``attn_implementation``: "sdpa" by default, "eager", flash / flex attention)."""

    is_causal = False

    def __init__(self, dim: int, num_heads: int, head_dim: int, layer_norm_eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scaling = head_dim**-0.5
        self.attn_implementation = "sdpa"
        self.norm_features = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm_latents = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """features (views, N, dim), latents (views, L, dim) -> (views, L, dim)."""
        features, latents = self.norm_features(features), self.norm_latents(latents)
        context = torch.cat([features, latents], dim=1)  # (views, N + L, dim)
        views, num_latents, _ = latents.shape
        # (views, length, heads * head_dim) -> (views, heads, length, head_dim)
        query = self.q_proj(latents).view(views, num_latents, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(context).view(views, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(context).view(views, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.attn_implementation, eager_cross_attention)
        output, _ = attention(self, query, key, value, None, scaling=self.scaling, dropout=0.0)
        # (views, L, heads, head_dim) -> (views, L, heads * head_dim)
        return self.o_proj(output.reshape(views, num_latents, self.num_heads * self.head_dim))


class PerceiverFeedForward(nn.Module):
    """Flamingo's feed-forward: ``norm`` -> ``linear_1`` (dim -> mult * dim) -> ``act`` (GELU) -> ``linear_2``."""

    def __init__(self, dim: int, mult: int, layer_norm_eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.linear_1 = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.norm(hidden))))


class PerceiverLayer(nn.Module):
    """``latents += attention(features, latents)``; ``latents += feed_forward(latents)``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, ff_mult: int, layer_norm_eps: float):
        super().__init__()
        self.attention = PerceiverCrossAttention(dim, num_heads, head_dim, layer_norm_eps)
        self.feed_forward = PerceiverFeedForward(dim, ff_mult, layer_norm_eps)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attention(features, latents)
        return latents + self.feed_forward(latents)


@_register("perceiver")
class PerceiverResamplerProjector(ZooProjector):
    """Flamingo's Perceiver Resampler (Alayrac et al., "Flamingo: a Visual Language Model for Few-Shot Learning",
    NeurIPS 2022; after Jaegle et al., "Perceiver", 2021), then ``linear_out`` to the LM width.

    ``latents`` (num_latents, in_features) are learned queries; ``layers`` (``depth`` of them) let them
    attend to [features; latents] and apply a feed-forward, both residual; ``norm`` is the final LayerNorm.
    Any number of input tokens gives ``num_latents`` tokens. Flamingo's time / media position embeddings are
    left out (one image per view here). Options: ``num_latents``, ``depth``, ``num_heads``, ``head_dim``,
    ``ff_mult``, ``layer_norm_eps``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        num_latents: int = 64,
        depth: int = 6,
        num_heads: int = 8,
        head_dim: int = 64,
        ff_mult: int = 4,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__(
            num_latents=num_latents,
            depth=depth,
            num_heads=num_heads,
            head_dim=head_dim,
            ff_mult=ff_mult,
            layer_norm_eps=layer_norm_eps,
        )
        self.latents = nn.Parameter(torch.empty(num_latents, in_features))
        self.layers = nn.ModuleList(
            PerceiverLayer(in_features, num_heads, head_dim, ff_mult, layer_norm_eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(in_features, eps=layer_norm_eps)
        self.linear_out = nn.Linear(in_features, out_features, bias=bias)
        self._init_zoo_weights()

    def _init_zoo_weights(self) -> None:
        # Flamingo: torch.randn latents; re-run by the model's _init_weights for latents a checkpoint lacks
        init.normal_(self.latents, mean=0.0, std=1.0)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        # (num_latents, dim) -> (views, num_latents, dim)
        latents = self.latents.to(features.dtype).unsqueeze(0).expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(features, latents)
        return self.linear_out(self.norm(latents))  # (views, num_latents, out)


def build_projector(
    projector_type: str, in_features: int, out_features: int, bias: bool = True, **options
) -> ZooProjector:
    """Build the projector registered under ``projector_type`` with keyword ``options`` (its ``projector_config``).

    ``ValueError`` names the valid keys for an unknown type, and the projector's valid options for an unknown option.
    """
    projector_class = PROJECTORS.get(projector_type)
    return projector_class(in_features, out_features, bias=bias, **projector_options(projector_type, options))


def _check_registries() -> None:
    """Both registries list the same projectors, and each module's keyword options are the declared ones."""
    if PROJECTORS.keys() != PROJECTOR_TOKENS.keys():
        raise RuntimeError(
            f"projector modules {PROJECTORS.keys()} and projector token counts {PROJECTOR_TOKENS.keys()} differ"
        )
    for key in PROJECTORS:
        parameters = inspect.signature(PROJECTORS.get(key)).parameters
        options = {name: p.default for name, p in parameters.items() if name not in _COMMON_ARGUMENTS}
        declared = dict(PROJECTOR_TOKENS.get(key).options)
        if options != declared:
            raise RuntimeError(
                f"projector '{key}' takes options {options} but vlmzoo.geometry declares {declared}"
            )


_check_registries()
