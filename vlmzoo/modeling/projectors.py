"""Projector registry: the modules that map vision features to the language model's width.

LLaVA 1.0 uses one linear layer, LLaVA 1.5 ``mlp2x_gelu`` (Linear -> GELU -> Linear). Their layers carry
transformers' native names (``linear_1``, ``act``, ``linear_2``, as ``LlavaMultiModalProjector``), so
transformers' checkpoints and tests address them directly; converters rename the original LLaVA's
``mm_projector.{0,2}``. Later families register ``ln_mlp``, ``pixel_shuffle``, ``c_abstractor``, ``ldp`` and ``perceiver`` here.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from ..registry import Registry

PROJECTORS: Registry = Registry("projector")


@PROJECTORS.register("linear")
class LinearProjector(nn.Module):
    """LLaVA 1.0: a single ``Linear(in_features -> out_features)`` named ``linear_1``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(features)


@PROJECTORS.register("mlp2x_gelu")
class MlpGeluProjector(nn.Module):
    """LLaVA 1.5: ``linear_1 (in -> out) -> act (GELU) -> linear_2 (out -> out)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class ImageNewline(nn.Module):
    """LLaVA-NeXT's learned vector written after every row of AnyRes tile features.

    A module (key ``image_newline.weight``) rather than a bare parameter, so peft's ``modules_to_save``
    can train it next to the projector under LoRA.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The vector repeated for ``rows`` rows, as (rows, 1, hidden) in ``like``'s dtype and device."""
        return self.weight.to(like).expand(rows, 1, -1)

    def _init_zoo_weights(self) -> None:
        init.normal_(self.weight, mean=0.0, std=1 / math.sqrt(self.weight.shape[0]))


def build_projector(projector_type: str, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """Build the projector registered under ``projector_type`` (``ValueError`` names the valid keys)."""
    return PROJECTORS.get(projector_type)(in_features, out_features, bias=bias)
