"""Training stages (docs/design.md §5): freeze/unfreeze per the paper's recipe, with its learning rates.

``model.set_training_stage(name)`` (on every vlmzoo model) does the freezing, and on a model with peft
adapters keeps every base weight frozen (a LoRA run stays one); this module adds the function form (which also
takes the peft wrapper) and :func:`recipe_learning_rate`, which reads the learning rate of a stage from the
family's config, where each family keeps its paper's recipe.
"""

from __future__ import annotations

from torch import nn


def _vlmzoo_model(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "set_training_stage"):
        raise TypeError(f"{type(base).__name__} is not a vlmzoo model (it has no set_training_stage)")
    return base


def set_training_stage(model: nn.Module, stage: str) -> dict[str, int]:
    """Set ``requires_grad`` for ``stage`` on a vlmzoo model (or a peft wrapper of one: the base weights stay frozen
    and the stage's components train their adapters and ``modules_to_save`` copies only; see
    ``ZooPreTrainedModel.set_training_stage``). Returns ``{component: trainable parameter count}``."""
    return _vlmzoo_model(model).set_training_stage(stage)


def recipe_learning_rate(model: nn.Module, stage: str) -> float:
    """The learning rate the family's paper uses for ``stage`` (``ValueError`` names the known stages)."""
    rates = _vlmzoo_model(model).config.recipe_learning_rates
    if stage not in rates:
        raise ValueError(f"the recipe has no learning rate for stage '{stage}'; stages with one: {sorted(rates)}")
    return rates[stage]


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will receive gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
