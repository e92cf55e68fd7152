"""Projector registry: the modules that map vision features to the language model's width.

LLaVA 1.0 uses one linear layer, LLaVA 1.5 ``mlp2x_gelu`` (Linear -> GELU -> Linear). Every projector is
an ``nn.Sequential`` so checkpoints keep the original LLaVA numbering (``0.weight``, ``2.weight``).
Later families register ``ln_mlp``, ``pixel_shuffle``, ``c_abstractor``, ``ldp`` and ``perceiver`` here.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry

PROJECTORS: Registry = Registry("projector")


@PROJECTORS.register("linear")
def build_linear_projector(in_features: int, out_features: int, bias: bool = True) -> nn.Sequential:
    """LLaVA 1.0: a single ``Linear(in_features -> out_features)``."""
    return nn.Sequential(nn.Linear(in_features, out_features, bias=bias))


@PROJECTORS.register("mlp2x_gelu")
def build_mlp2x_gelu_projector(in_features: int, out_features: int, bias: bool = True) -> nn.Sequential:
    """LLaVA 1.5: ``Linear(in -> out) -> GELU -> Linear(out -> out)``."""
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=bias),
        nn.GELU(),
        nn.Linear(out_features, out_features, bias=bias),
    )


def build_projector(projector_type: str, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """Build the projector registered under ``projector_type`` (``ValueError`` names the valid keys)."""
    return PROJECTORS.get(projector_type)(in_features, out_features, bias=bias)
