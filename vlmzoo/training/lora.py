"""LoRA for vlmzoo models: a ``peft.LoraConfig`` aimed at the right components (docs/design.md §5).

By default only the language model's linear layers get adapters (a plain ``["q_proj", "v_proj"]`` list
would also hit CLIP/SigLIP attention); ``components=("language_model", "vision_tower")`` opts the tower in.
The other components that the chosen training stage trains (e.g. the projector) go to ``modules_to_save``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from peft import LoraConfig
from torch import nn


def _component_prefixes(model: nn.Module) -> dict[str, list[str]]:
    """Component -> qualified module names of its modules.

    A bare ``nn.Parameter`` part is refused: peft freezes every parameter that is neither an adapter nor
    inside a ``modules_to_save`` module, so it would silently stop training. vlmzoo's learned vectors are
    modules (``LearnedTokens``) for this reason.
    """
    names = {id(module): name for name, module in model.named_modules()}
    parameter_names = {id(parameter): name for name, parameter in model.named_parameters()}
    prefixes: dict[str, list[str]] = {}
    for component, parts in model.component_parts().items():
        bare = [parameter_names.get(id(part), "?") for part in parts if isinstance(part, nn.Parameter)]
        if bare:
            raise ValueError(
                f"component '{component}' holds bare parameters {bare}, which LoRA (peft) would freeze; make each a "
                f"module with a `weight` (vlmzoo.modeling.modeling_base.LearnedTokens) so modules_to_save can train it"
            )
        prefixes[component] = [names[id(part)] for part in parts if id(part) in names]
    return prefixes


def lora_config(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    components: Sequence[str] = ("language_model",),
    stage: str = "instruct",
    **kwargs,
) -> LoraConfig:
    """A ``LoraConfig`` whose adapters sit on every linear layer of ``components`` (never ``lm_head``).

    ``modules_to_save`` gets the modules of the other components that ``stage`` trains, so e.g. the
    projector keeps training in full next to the LM adapters.
    """
    prefixes = _component_prefixes(model)
    unknown = [c for c in components if c not in prefixes]
    if unknown:
        raise ValueError(f"unknown components {unknown}; valid components: {sorted(prefixes)}")
    stages = model.config.training_stages
    if stage not in stages:
        raise ValueError(f"unknown training stage '{stage}'; this model's stages: {sorted(stages)}")

    adapted = [prefix for component in components for prefix in prefixes[component]]
    adapted = [prefix for prefix in adapted if not prefix.endswith("lm_head")]
    leaf_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and any(name.startswith(prefix + ".") for prefix in adapted)
        }
    )
    if not leaf_names:
        raise ValueError(f"components {list(components)} contain no linear layers to adapt")
    # peft full-matches a string target against each module name: only linear layers under the chosen prefixes
    target_modules = (
        f"({'|'.join(re.escape(prefix) for prefix in adapted)})\\..*\\.({'|'.join(map(re.escape, leaf_names))})"
    )
    modules_to_save = [
        prefix.rsplit(".", 1)[-1]
        for component in stages[stage]
        if component not in components
        for prefix in prefixes[component]
    ]
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save or None,
        **kwargs,
    )
