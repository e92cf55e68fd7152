"""The base class of every vlmzoo model (docs/design.md §4, §5): backend flags, weight initialisation of
vlmzoo's own tensors (also after a meta-device load), the component table's reading and the training stages
(``set_training_stage``, with a LoRA-wrapped model's base kept frozen), the loss over learned tokens, and the
checked ``save_pretrained``. The generic pair of ``modeling_base`` subclasses it; nothing here knows a family.
"""

import functools
from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


class ZooPreTrainedModel(PreTrainedModel):
    """Base class of every vlmzoo model: backend flags, init of vlmzoo's own tensors, training stages."""

    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # the placeholder count check goes through torch_compilable_check

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers treats every class outside its own package as custom code and then skips the init of
        # modules without parameters of their own (e.g. CLIPAttention, which initialises its projections), so a
        # model loaded with weights missing would differ from one built fresh. vlmzoo initialises through
        # `transformers.initialization` like native models, so it takes the native path unless loaded remotely.
        return cls.is_remote_code()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # vlmzoo blocks with parameters or buffers that the generic rules above do not cover declare
        # `_init_zoo_weights()`; buffers computed in __init__ are rebuilt there too, because
        # from_pretrained creates modules on the meta device.
        if hasattr(module, "_init_zoo_weights"):
            module._init_zoo_weights()

    # ----- components and training stages (docs/design.md §4, §5) --------------------------------------
    def component_parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """Component name -> its modules / bare parameters, read from the config's component table.

        The table (``config.component_table``) maps each component to attribute paths of the base model;
        the LM head of a ``…ForConditionalGeneration`` belongs to ``language_model``.
        """
        # a generation class holds its base model as `model`; a base model is its own base
        base = self.model if isinstance(getattr(self, "model", None), ZooPreTrainedModel) else self
        parts: dict[str, list] = {}
        for component, paths in self.config.component_table.items():
            found = [_resolve(base, path) for path in paths]
            parts[component] = [part for part in found if part is not None]
        if base is not self and hasattr(self, "lm_head"):
            parts["language_model"].append(self.lm_head)
        return parts

    def set_training_stage(self, stage: str) -> dict[str, int]:
        """Train exactly the components that ``config.training_stages[stage]`` lists; freeze everything else.

        Every parameter is frozen first, so nothing outside the component table can leak into training.
        Logs one line per component (at the default level) and returns ``{component: trainable count}``.

        On a model with peft adapters (``peft.get_peft_model`` puts them into this model, so calling this on the
        ``PeftModel`` or on the model inside it is the same) the base weights stay frozen, as LoRA means: a component
        of the stage trains its active adapters (LoRA layers) and its ``modules_to_save`` copies, exactly what peft
        itself makes trainable, and every other component, adapters included, is frozen. A component of the stage
        that has neither is refused (``ValueError``): its base weights would train outside the adapter, and peft
        would not save them. The log says so on a line of its own.
        """
        stages = self.config.training_stages
        if stage not in stages:
            raise ValueError(f"unknown training stage '{stage}'; this model's stages: {sorted(stages)}")
        parts = self.component_parts()
        trained = stages[stage]
        missing = [component for component in trained if not parts.get(component)]
        if missing:
            present = [name for name, modules in parts.items() if modules]
            raise ValueError(
                f"training stage '{stage}' trains {missing}, which this model does not have; its components: {present}"
            )
        adapted = bool(self._peft_layers(self))
        adapters = {
            component: [layer for part in modules if isinstance(part, nn.Module) for layer in self._peft_layers(part)]
            for component, modules in parts.items()
        }
        if adapted:
            bare = [component for component in trained if not adapters[component]]
            if bare:
                raise ValueError(
                    f"training stage '{stage}' trains {bare}, which have no peft adapter and no modules_to_save copy in "
                    f"this adapted model: their base weights stay frozen under LoRA (and peft would not save them). "
                    f"Give them adapters (vlmzoo.training.lora_config(model, components=(..., {bare[0]!r}))) or a "
                    f"modules_to_save copy (lora_config(model, stage={stage!r}) before get_peft_model), or pick a stage "
                    f"without them"
                )
            logger.warning(
                "stage %s: the model has peft adapters: base weights stay frozen; the stage's components train their "
                "adapters and modules_to_save copies only", stage,
            )  # fmt: skip
        self.requires_grad_(False)
        counts: dict[str, int] = {}
        for component, modules in parts.items():
            parameters = list(component_parameters(modules))
            if component in trained and adapted:
                for layer in adapters[component]:
                    self._train_active_adapters(layer)
            elif component in trained:
                for parameter in parameters:
                    parameter.requires_grad_(True)
            counts[component] = sum(p.numel() for p in parameters if p.requires_grad)
            state = "trainable" if component in trained else "frozen"
            total = counts[component] if component in trained else sum(p.numel() for p in parameters)
            how = ""
            if adapted and adapters[component]:
                frozen_base = sum(p.numel() for p in parameters) - counts[component]
                trains = f" (adapters / copies; {frozen_base} base params frozen)"
                how = trains if component in trained else " (adapters too)"
            logger.warning("stage %s: %-22s %-9s %12d params%s", stage, component, state, total, how)
        return counts

    # ----- the loss and saving ----------------------------------------------------------------------------
    @property
    def loss_function(self):
        """transformers' loss for the model's ``loss_type``, dividing the summed token losses by the number of
        learned tokens: ``num_items_in_batch`` when given (the ``Trainer`` counts a whole accumulation step), else this
        batch's targets that are not -100, and by at least 1, so a batch with nothing to learn (every label -100) gives a
        loss of 0.0 with zero gradients instead of 0/0 = NaN (docs/index.md, Training). A loss function set by the user
        (``model.loss_function = ...``) is used as given."""
        if hasattr(self, "_loss_function"):
            return self._loss_function
        return functools.partial(self._loss_over_learned_tokens, PreTrainedModel.loss_function.fget(self))

    @loss_function.setter
    def loss_function(self, value):
        self._loss_function = value

    def language_modeling_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, learned: int | None, kwargs: dict,
        shift_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The forward's loss: ``self.loss_function``, or, when the forward's label check already counted the
        ``learned`` targets (``check_labels(count_learned_from=...)``, in its one host read) and nothing overrides the
        division (no user loss function, no ``num_items_in_batch``, no other ``ignore_index`` or ``shift_labels``
        than the check counted), transformers' own loss with that count: its mean over the learned targets, as native
        models compute it, and a sum divided by 1 (0.0, zero gradients) when there is none. Same value as
        ``loss_function``, without the count's device reductions. ``shift_labels``: the targets as the forward aligned
        them (an encoder-decoder's unshifted labels), handed to the loss."""
        fast = learned is not None and not hasattr(self, "_loss_function") and kwargs.keys().isdisjoint(_LOSS_COUNT_KWARGS)
        if shift_labels is not None:
            kwargs = {**kwargs, "shift_labels": shift_labels}
        if not fast:
            return self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
        native = PreTrainedModel.loss_function.fget(self)
        return native(logits, labels, vocab_size, num_items_in_batch=None if learned else 1, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``; an existing file at ``save_directory`` raises ``FileExistsError``
        (transformers logs an error and saves nothing)."""
        from ..configuration.validation import check_save_directory

        check_save_directory(save_directory, "model")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @staticmethod
    def _peft_layers(module: nn.Module) -> list[nn.Module]:
        """The peft layers inside ``module`` (itself included): adapter layers (LoRA, ...) and ``modules_to_save``
        wrappers; empty without peft."""
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
            from peft.utils.other import AuxiliaryTrainingWrapper
        except ImportError:  # pragma: no cover - peft is a dependency; a model without it has no adapters
            return []
        return [layer for layer in module.modules() if isinstance(layer, (BaseTunerLayer, AuxiliaryTrainingWrapper))]

    @staticmethod
    def _train_active_adapters(layer: nn.Module) -> None:
        """Make a peft layer's active adapters (a ``modules_to_save`` wrapper: its active copies) trainable, by peft's
        own rule (``set_adapter``: the base layer and the original module untouched); disabled adapters stay frozen."""
        if not layer.disable_adapters:
            layer.set_adapter(layer.active_adapters)

    @staticmethod
    def _loss_over_learned_tokens(
        native: Callable, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, num_items_in_batch=None,
        ignore_index: int = -100, shift_labels: torch.Tensor | None = None, **kwargs,
    ) -> torch.Tensor:  # fmt: skip
        """``native`` (a transformers loss) as a sum over the learned tokens divided by their count, at least 1."""
        if num_items_in_batch is None:
            targets = shift_labels if shift_labels is not None else labels[..., 1:]  # what the native loss shifts to
            num_items_in_batch = (targets != ignore_index).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.clamp(min=1)
        else:
            num_items_in_batch = max(num_items_in_batch, 1)
        return native(
            logits, labels, vocab_size, num_items_in_batch=num_items_in_batch, ignore_index=ignore_index,
            shift_labels=shift_labels, **kwargs,
        )  # fmt: skip


# loss inputs that change what the learned-token count of check_labels would have to be (shift_labels: a caller's own
# targets; the encoder-decoder path passes the labels themselves and counts them from position 0 before)
_LOSS_COUNT_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")


def _resolve(root: nn.Module, path: str) -> nn.Module | nn.Parameter | None:
    """``root.a.b`` for the path ``"a.b"``, or ``None`` when an attribute on the way is absent or ``None``."""
    target = root
    for name in path.split("."):
        target = getattr(target, name, None)
        if target is None:
            return None
    return target


def component_parameters(parts: Iterable[nn.Module | nn.Parameter | None]) -> Iterable[nn.Parameter]:
    """Each parameter of a component's modules and loose parameters, once (``None`` parts skipped)."""
    seen: set[int] = set()
    for part in parts:
        if part is None:
            continue
        params = [part] if isinstance(part, nn.Parameter) else part.parameters()
        for parameter in params:
            if id(parameter) not in seen:
                seen.add(id(parameter))
                yield parameter
