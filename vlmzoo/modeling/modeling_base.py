"""The shared VLM skeleton (DESIGN.md §4) every family model builds on.

Owns: the base ``PreTrainedModel`` flags (attention backends, gradient checkpointing; ``_no_split_modules``
are gathered from the sub-models by ``post_init``), weight initialisation of vlmzoo's own parameters and
buffers (also after a meta-device load), placing visual embeddings at the image tokens with a count check,
the LM-head + ``loss_function`` tail, and ``set_training_stage`` (DESIGN.md §5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.modeling_utils import slice_logits_to_keep

logger = logging.getLogger(__name__)


@dataclass
class ZooModelOutputWithPast(BaseModelOutputWithPast):
    """Base-model output plus the projected visual embeddings placed into the sequence."""

    image_hidden_states: torch.Tensor | None = None


@dataclass
class ZooCausalLMOutputWithPast(ModelOutput):
    """``…ForConditionalGeneration`` output (DESIGN.md §4)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: torch.Tensor | None = None


class ZooPreTrainedModel(PreTrainedModel):
    """Base class of every vlmzoo model: backend flags, init of vlmzoo's own tensors, training stages."""

    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # the image-token count check reads a tensor value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # vlmzoo blocks with parameters or buffers that the generic rules above do not cover declare
        # `_init_zoo_weights()`; buffers computed in __init__ are rebuilt there too, because
        # from_pretrained creates modules on the meta device.
        if hasattr(module, "_init_zoo_weights"):
            module._init_zoo_weights()

    # ----- training stages (DESIGN.md §5) -----------------------------------------------------------
    def stage_component_modules(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """Component name -> the modules/parameters it owns; families implement this."""
        raise NotImplementedError

    def set_training_stage(self, stage: str) -> dict[str, int]:
        """Train exactly the components that ``config.training_stages[stage]`` lists; freeze the rest.

        Logs one line per component and returns ``{component: trainable parameter count}``.
        """
        stages = self.config.training_stages
        if stage not in stages:
            raise ValueError(f"unknown training stage '{stage}'; this model's stages: {sorted(stages)}")
        trained = set(stages[stage])
        counts: dict[str, int] = {}
        for component, parts in self.stage_component_modules().items():
            parameters = list(component_parameters(parts))
            for parameter in parameters:
                parameter.requires_grad_(component in trained)
            counts[component] = sum(p.numel() for p in parameters if p.requires_grad)
            state = "trainable" if component in trained else "frozen"
            logger.info("stage %s: %-22s %-9s %12d params", stage, component, state, sum(p.numel() for p in parameters))
        return counts


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


def image_token_mask(
    input_ids: torch.LongTensor | None,
    inputs_embeds: torch.Tensor,
    image_token_id: int,
    embed_tokens: nn.Module,
) -> torch.Tensor:
    """(batch, seq) bool mask of the image placeholders, read from ids or, without ids, from embeddings."""
    if input_ids is not None:
        return input_ids == image_token_id
    image_embedding = embed_tokens(torch.tensor(image_token_id, dtype=torch.long, device=inputs_embeds.device))
    return (inputs_embeds == image_embedding).all(-1)


def place_image_features(
    inputs_embeds: torch.Tensor, image_mask: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """Write (num_image_tokens, hidden) visual embeddings at the image tokens of (batch, seq, hidden) embeds.

    The processor alone decides how many tokens an image gets; any mismatch is a ``ValueError``.
    """
    num_tokens = int(image_mask.sum())
    num_features = image_features.shape[0]
    if num_tokens != num_features:
        raise ValueError(
            f"Image features and image tokens do not match: the text has {num_tokens} image tokens but the images "
            f"produce {num_features} visual embeddings. Build the inputs with the model's processor, which expands "
            f"each image placeholder to the right number of tokens."
        )
    if image_features.shape[-1] != inputs_embeds.shape[-1]:
        raise ValueError(
            f"visual embeddings have width {image_features.shape[-1]}, the language model {inputs_embeds.shape[-1]}"
        )
    image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)


class ZooCausalLMHeadMixin:
    """``lm_head`` + ``loss_function`` tail shared by every ``…ForConditionalGeneration``."""

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def _lm_head_output(
        self,
        outputs: ZooModelOutputWithPast,
        labels: torch.LongTensor | None,
        logits_to_keep: int | torch.Tensor,
        **kwargs,
    ) -> ZooCausalLMOutputWithPast:
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.get_text_config().vocab_size, **kwargs
            )
        return ZooCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )
