"""Small learned modules that the skeleton and the families share (docs/design.md §3 ``blocks.py``).

Learned vectors are modules, not bare parameters: each holds one ``weight`` (key ``<name>.weight``), so peft's
``modules_to_save`` trains it beside LoRA adapters (``get_peft_model`` freezes bare parameters), and its
``_init_zoo_weights`` hook (called by the skeleton's ``_init_weights``) re-initialises it after a meta-device
load. Used for BLIP-2's query tokens (Li et al. 2023), LLaVA-NeXT's row newline (Liu et al. 2024) and the
perceiver projector's latents. Nothing here imports the skeleton.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init


class LearnedTokens(nn.Module):
    """Learned vectors held as a module (BLIP-2's query tokens, LLaVA-NeXT's newline, perceiver latents).

    A module with one ``weight`` (key ``<name>.weight``), not a bare parameter: peft's ``modules_to_save``
    trains it next to LoRA adapters (``get_peft_model`` freezes bare parameters), and ``_init_zoo_weights``
    re-initialises it after a meta-device load (normal, ``std`` or 1/sqrt(last dim) by default).
    """

    def __init__(self, *shape: int, std: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(*shape))
        self.std = std

    def forward(self, batch_size: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """The vectors for a batch: (batch_size, *shape), in ``like``'s dtype and device when given."""
        weight = self.weight
        if like is not None and (weight.dtype != like.dtype or weight.device != like.device):
            weight = weight.to(like)  # (a `.to` that changes nothing still costs ~1.5 us per image call)
        return weight.expand(batch_size, *weight.shape)  # a new leading dim of stride 0, as unsqueeze(0) + expand

    def _init_zoo_weights(self) -> None:
        std = self.std if self.std is not None else self.weight.shape[-1] ** -0.5
        init.normal_(self.weight, mean=0.0, std=std)


class ImageNewline(LearnedTokens):
    """LLaVA-NeXT's learned vector written after every row of AnyRes tile features (key ``image_newline.weight``).

    Initialised like transformers' LLaVA-NeXT: normal with std 1/sqrt(hidden size).
    """

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)

    def forward(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The vector repeated for ``rows`` rows, as (rows, 1, hidden) in ``like``'s dtype and device."""
        return self.weight.to(like).expand(rows, 1, -1)



__all__ = ["LearnedTokens", "ImageNewline"]
