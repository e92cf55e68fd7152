"""Training stages (DESIGN.md §5): freeze/unfreeze per the paper's recipe, with its learning rates.

``model.set_training_stage(name)`` (on every vlmzoo model) does the freezing; this module adds the
function form and each recipe's learning rate so a ``Trainer`` run can follow the paper.
"""

from __future__ import annotations

from torch import nn

# learning rates of the LLaVA recipe (stage 1 projector only; stage 2 projector + LLM)
RECIPE_LEARNING_RATES: dict[str, float] = {"align": 1e-3, "instruct": 2e-5, "full": 2e-5}


def set_training_stage(model: nn.Module, stage: str) -> dict[str, int]:
    """Set ``requires_grad`` for ``stage`` on a vlmzoo model (or a peft wrapper of one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "set_training_stage"):
        raise TypeError(f"{type(base).__name__} is not a vlmzoo model (it has no set_training_stage)")
    return base.set_training_stage(stage)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will receive gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
