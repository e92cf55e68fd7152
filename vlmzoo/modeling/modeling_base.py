"""The shared VLM skeleton (docs/design.md §4): the generic model pair every family subclasses, for decoder-only
language models, on ``pretrained.ZooPreTrainedModel`` (backend flags, initialisation of vlmzoo's own tensors,
components and training stages):

- :class:`ZooVLMModel`: embeddings, encoding each modality once (or taking pre-computed
  ``mm_encoder_outputs``), placing the features at their placeholders with a compile-friendly count
  check, the position hook and the language-model call. A family supplies ``build_components`` and
  ``get_image_features`` (and ``get_video_features`` for video).
- :class:`ZooVLMForConditionalGeneration`: ``model`` + ``lm_head``, tied keys, the loss through
  ``loss_function`` and generation through ``GenerationMixin``.

The path of the pixels: a family's ``forward`` (explicit, with its own inputs typed and documented) calls
``self.model(...)``; the base model's ``forward`` calls :meth:`ZooVLMModel.multimodal_forward`, whose
:meth:`~ZooVLMModel.embed_multimodal` calls the family's ``get_image_features`` (the towers, the fusion, the
projector) and writes the features at the placeholders before the language model runs. A family whose inputs
are the generic ones inherits both forwards.

Encoder-decoder language models (BLIP-2's Flan-T5) are not handled here: ``encoder_decoder.py`` holds that
path as a mixin that the families which accept one compose. Conventions follow transformers 5.24 (``cache``
with ``past_key_values`` deprecated until 5.40, the multimodal output classes with ``image_outputs``, in
``outputs.py``), as native ``LlavaForConditionalGeneration`` does.
"""

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules import module as _torch_module
from transformers import AutoModel, GenerationMixin, PreTrainedConfig
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import (
    TransformersKwargs,
    is_torchdynamo_compiling,
    logging,
)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .encoder_decoder import SEQ2SEQ_INPUT_NAMES
from .input_checks import (
    check_feature_count,
    check_generation_mask,
    check_labels,
    check_pixel_input,
    check_text_inputs,
)
from .docstrings import KWARGS_DOC, LM_HEAD_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, MODEL_INPUTS_DOC, forward_docstring
from .outputs import ZooVLMCausalLMOutputWithPast, ZooVLMModelOutputWithPast
from .packing import packed_language_model_inputs, text_positions
from .pretrained import ZooPreTrainedModel

logger = logging.get_logger(__name__)


def _require_visible_inputs(cls: type, names: Iterable[str]) -> None:
    """``TypeError`` at class creation when ``cls.forward`` does not take every family input by name: generate()
    validates its keyword arguments and the Trainer keeps dataset columns by the forward's signature."""
    parameters = inspect.signature(cls.forward).parameters
    hidden = [name for name in names if name not in parameters]
    if hidden:
        raise TypeError(
            f"{cls.__name__}.forward does not take the family inputs {hidden} that {cls.__name__} declares; define "
            f"forward with them as keyword arguments (see docs/adding_a_family.md)"
        )


def _family_input_names(model_class: "type[ZooVLMModel]") -> tuple[str, ...]:
    """The inputs a family adds to the generic forward: its ``family_input_names`` and extra pixel inputs."""
    extra_pixels = [name for name in model_class.modality_pixel_inputs.values() if name != "pixel_values"]
    return (*model_class.family_input_names, *extra_pixels)


def refuse_decoder_inputs(config: PreTrainedConfig, kwargs: dict) -> None:
    """A decoder-only language model given an encoder-decoder's decoder-side inputs: ``ValueError`` (they would be
    ignored silently)."""
    given = sorted(name for name in SEQ2SEQ_INPUT_NAMES if kwargs.get(name) is not None)
    if given:
        raise ValueError(
            f"{given} are inputs of an encoder-decoder language model, but this model's language model "
            f"('{config.get_text_config().model_type}') is a decoder: pass input_ids only"
        )


class ZooVLMModel(ZooPreTrainedModel):
    """Generic base model: components, placeholders, positions and the language model (no LM head).

    A family subclass implements ``build_components(config)`` (set its vision modules as attributes) and
    ``get_image_features`` (native signature and return type: a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` is the list of each image's embeddings). Optional hooks: ``build_language_model``,
    ``compute_position_ids``; ``modality_pixel_inputs`` adds modalities (``{"video": "pixel_values_videos"}``);
    ``family_input_names`` declares the family's extra inputs (its ``forward`` takes them by name and hands them
    to :meth:`multimodal_forward`), and ``family_input_checks`` checks them when images are encoded.
    """

    # modality -> the input holding its pixels; each modality has `config.<modality>_token_id` and
    # `get_<modality>_features`
    modality_pixel_inputs: ClassVar[dict[str, str]] = {"image": "pixel_values"}
    # the family's extra inputs: they reach the feature functions (by their signatures) and the position hook
    family_input_names: ClassVar[tuple[str, ...]] = ()
    # family input name -> check(value, the image pixels), run by get_image_features before it encodes
    family_input_checks: ClassVar[dict[str, Callable[[object, torch.Tensor], None]]] = {}
    # out-of-vocabulary token id -> what it means and the fix, added to the vocabulary error (``{image_token_id}``
    # is filled in): ids that prompts made by another code base carry
    token_hints: ClassVar[dict[int, str]] = {}
    # the attribute of the language model that the forwards run (unless something hooks the language model), when the
    # language model's own forward only repackages that module's output (as a native causal-LM head calls its decoder
    # stack directly); None: the model
    language_model_stack: ClassVar[str | None] = None
    # modality -> the method whose output the forward places at that modality's placeholders (and generate() encodes
    # once before prefill); default `get_<modality>_features`. A family whose `get_image_features` follows a native API
    # with another output (transformers' Blip2Model returns the tower's) names its placement function here
    feature_methods: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _require_visible_inputs(cls, _family_input_names(cls))
        # the feature functions check their pixels (and the family inputs that describe them) themselves:
        # generate() calls them directly
        for modality, pixel_name in cls.modality_pixel_inputs.items():
            method = cls.feature_method(modality)
            function = cls.__dict__.get(method)
            if function is not None and not getattr(function, "_zoo_checked", False):
                setattr(cls, method, _checked_feature_function(function, pixel_name))

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        self.build_components(config)
        self.language_model = self.build_language_model(config.text_config)
        # a language model with a learned position table (OPT: 2048 positions, tiny presets 512) fails deep inside
        # torch past its end; the prompt is checked against it (rotary models extrapolate: no limit)
        self.position_limit = _learned_position_limit(self.language_model, config.text_config)
        self.post_init()

    # ----- hooks a family fills in --------------------------------------------------------------------
    def build_components(self, config: PreTrainedConfig) -> None:
        """Create the family's vision-side modules (``vision_tower``, ``multi_modal_projector``, …)."""
        raise NotImplementedError

    def build_language_model(self, text_config: PreTrainedConfig) -> nn.Module:
        """The base language model (no head); a family may swap modules in it (e.g. the rotary embedding)."""
        return AutoModel.from_config(text_config)

    def compute_position_ids(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        cache: Cache | None,
        **family_inputs,
    ) -> torch.LongTensor | None:
        """Positions for the language model, of any leading shape ((B, L), or M-RoPE's (3, B, L)).

        The default leaves them to the language model. A family with its own positions (M-RoPE) keeps what it
        needs across decode steps on the model (e.g. ``self.rope_deltas``).
        """
        return position_ids

    def packing_position_ids(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, **family_inputs
    ) -> torch.LongTensor:
        """The position streams of each sample of a right-padded batch, as the sample alone, unpadded, gets them: what
        a padding-free batch (``VLMDataCollator(processor, packing=True, model=model)``) restarts per sample.

        Args:
            input_ids, attention_mask: (B, L), the processor's batch padded on the right (one sample per row).
            family_inputs: the processor's other outputs for the batch (``image_grid_thw``, ``mm_token_type_ids``,
                ...), as the forward takes them.

        Returns: (streams, B, L) long; padding positions are ignored. The default: one stream, 0 .. n - 1 per row.
        A family with its own positions (``compute_position_ids``, e.g. M-RoPE's three streams) overrides it and
        returns its (3, B, L) prefill positions; the collator then lays out (4, 1, total) positions (row 0 the text
        positions) and the family's ``compute_position_ids`` must pass given positions through unchanged.
        """
        if type(self).compute_position_ids is not ZooVLMModel.compute_position_ids:
            raise NotImplementedError(
                f"{type(self).__name__} computes its own positions (compute_position_ids) but does not implement "
                f"packing_position_ids, so a padding-free batch would give its samples plain positions; override "
                f"packing_position_ids (docs/adding_a_family.md) or use padded batches"
            )
        # (B, L) -> (1, B, L): 0 .. n - 1 over each row's tokens
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0)

    # ----- embeddings ---------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, token_id: int
    ) -> torch.Tensor:
        """(batch, seq) bool mask of one placeholder kind, read from the ids or, without ids, from the embeddings."""
        if input_ids is not None:
            return input_ids == token_id
        token = torch.full((), token_id, dtype=torch.long, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(token)).all(-1)

    @classmethod
    def feature_method(cls, modality: str) -> str:
        """The name of the method whose output is placed at ``modality``'s placeholders."""
        return cls.feature_methods.get(modality, f"get_{modality}_features")

    def _feature_function(self, modality: str):
        method = self.feature_method(modality)
        return getattr(self, method), _accepted_keywords(type(self), method)

    def _place_features(
        self,
        modality: str,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        encoder_output: BaseModelOutputWithPooling | None,
        cache: Cache | None,
        mask: torch.Tensor | None = None,
        num_tokens: int | None = None,
    ) -> torch.Tensor:
        """Write a modality's embeddings at its placeholders, after checking that the counts agree. ``mask`` /
        ``num_tokens``: the placeholder mask and its count when already made (``embed_multimodal``)."""
        if mask is None:  # (a given mask was made from a set token id: no second config read, ~1 us)
            token_id = getattr(self.config, f"{modality}_token_id")
            if token_id is None:
                if encoder_output is None:
                    return inputs_embeds
                raise ValueError(
                    f"config.{modality}_token_id is not set, so the {modality} features have no placeholders; set it "
                    f"to the tokenizer's {modality} token id (the processor's `{modality}_token_id`)"
                )
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, token_id)
        if encoder_output is None:
            token_id = getattr(self.config, f"{modality}_token_id")
            # native behaviour: placeholders without pixels embed as ordinary tokens; say why once
            if not is_torchdynamo_compiling() and (cache is None or cache.get_seq_length() == 0) and mask.any():
                logger.warning_once(
                    f"The inputs hold {modality} placeholder tokens (id {token_id}) but no {modality} pixels were "
                    f"given: they are embedded as ordinary tokens. Pass the {modality}s the processor made."
                )
            return inputs_embeds
        pooled = encoder_output.pooler_output
        hidden = inputs_embeds.shape[-1]
        # per-item list of (tokens_i, hidden), or a (items, tokens, hidden) tensor -> (total tokens, hidden); a single
        # item as a view (no copy, no cat node in the backward graph)
        if len(pooled) == 1:
            features = pooled[0]
            features = features if features.dim() == 2 else features.reshape(-1, features.shape[-1])
        else:
            features = torch.cat([item.reshape(-1, item.shape[-1]) for item in pooled], dim=0)
        check_feature_count(
            mask, hidden, features.numel(),
            lambda count: _count_mismatch_message(modality, count, features, hidden, cache), num_tokens,
        )  # fmt: skip
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

    def _check_positions(self, length: int, cache: Cache | None) -> None:
        """The prompt (after what the cache holds) within the language model's learned position table, if it has one."""
        past = cache.get_seq_length() if cache is not None else 0
        if past + length > self.position_limit:
            raise ValueError(
                f"the language model has {self.position_limit} learned positions, but this call reaches position "
                f"{past + length} ({past} cached + {length} new tokens, image tokens included); shorten the prompt or "
                f"use fewer or smaller images"
            )

    def _check_inputs(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, embeddings, placeholder_masks=()
    ) -> list[int] | None:
        """Refuse inputs the model cannot compute, with the cause (``input_checks``; cheap, compile-safe). Returns
        the counts of ``placeholder_masks`` when the vocabulary check read them (``check_text_inputs``), else None.

        The vocabulary and the width come from the input embeddings themselves (what the ids index, what
        ``inputs_embeds`` must match): a transformers config read costs ~1 us, so none is made on the way."""
        text_config = None
        vocab_size, hidden_size = getattr(embeddings, "num_embeddings", None), getattr(embeddings, "embedding_dim", None)
        if vocab_size is None or hidden_size is None:
            text_config = self.config.get_text_config()
            vocab_size, hidden_size = text_config.vocab_size, text_config.hidden_size
        counts = check_text_inputs(
            input_ids, inputs_embeds, attention_mask, cache is not None, vocab_size, hidden_size,
            self._image_token_id_for_messages, position_ids, token_hints=self.token_hints,
            placeholder_masks=placeholder_masks,
        )  # fmt: skip
        if self.position_limit is not None:
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            if attention_mask is None and position_ids is not None and cache is None:  # maybe packed: its samples
                text = text_positions(position_ids)
                length = length if text is None else int(text.max()) + 1
            self._check_positions(length, cache)
        return counts

    def _image_token_id_for_messages(self) -> int | None:
        return getattr(self.config, "image_token_id", None)

    def embed_multimodal(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        cache: Cache | None,
        pixel_inputs: dict[str, torch.Tensor | None],
        family_inputs: dict,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None,
    ) -> tuple[torch.Tensor, dict[str, BaseModelOutputWithPooling]]:
        """Check the inputs, encode each modality's pixels once (unless ``mm_encoder_outputs`` has it) and write
        the features at their placeholders: returns the language model's ``inputs_embeds`` and the encoders'
        outputs by modality."""
        for name, pixels in pixel_inputs.items():
            if pixels is not None:
                check_pixel_input(name, pixels)  # first: token ids in the pixels' place are named as such
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if mm_encoder_outputs and any(pixels is not None for pixels in pixel_inputs.values()):
            raise ValueError("pass either pixel_values or pre-computed mm_encoder_outputs, not both")
        embeddings = self.get_input_embeddings()
        # the placeholder masks of the modalities with features to place, made first so that their counts come with
        # the vocabulary check's host read: one read per prefill, before the encoders run (no sync waits for them)
        masks = {}
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            for modality, pixel_name in self.modality_pixel_inputs.items():
                if pixel_inputs.get(pixel_name) is None and (mm_encoder_outputs or {}).get(modality) is None:
                    continue
                token_id = getattr(self.config, f"{modality}_token_id")
                if token_id is not None:
                    masks[modality] = self.get_placeholder_mask(input_ids, None, token_id)
        counts = self._check_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, embeddings, tuple(masks.values())
        )
        counts = dict(zip(masks, counts)) if counts is not None else {}
        # encode the pixels before embedding the text: backward then reaches the (possibly lm_head-tied)
        # embeddings before the encoders, so their gradient is accumulated before the encoders' gradients
        # exist (a lower training peak, as transformers' BLIP-2 orders it)
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        for modality, pixel_name in self.modality_pixel_inputs.items():
            pixels = pixel_inputs.get(pixel_name)
            if mm_encoder_outputs.get(modality) is None and pixels is not None and pixels.numel() > 0:
                function, accepted = self._feature_function(modality)
                arguments = {name: value for name, value in family_inputs.items() if name in accepted}
                mm_encoder_outputs[modality] = function(pixels, **arguments, return_dict=True)
        if inputs_embeds is None:
            inputs_embeds = embeddings(input_ids)
        for modality in self.modality_pixel_inputs:
            inputs_embeds = self._place_features(
                modality, input_ids, inputs_embeds, mm_encoder_outputs.get(modality), cache, masks.get(modality),
                counts.get(modality),
            )  # fmt: skip
        return inputs_embeds, mm_encoder_outputs

    # ----- forward ------------------------------------------------------------------------------------
    def multimodal_forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        cache: Cache | None,
        use_cache: bool | None,
        pixel_inputs: dict[str, torch.Tensor | None],
        family_inputs: dict,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None,
        kwargs: dict,
    ) -> ZooVLMModelOutputWithPast:
        """What every family's ``forward`` runs: the media embedded at their placeholders (``embed_multimodal``),
        the family's positions, then the language model. ``pixel_inputs`` maps each modality's pixel input name
        to its tensor (or ``None``); ``family_inputs`` holds the family's own inputs that were given."""
        if kwargs:
            refuse_decoder_inputs(self.config, kwargs)
        inputs_embeds, mm_encoder_outputs = self.embed_multimodal(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, pixel_inputs, family_inputs,
            mm_encoder_outputs,
        )  # fmt: skip
        position_ids = self.compute_position_ids(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, **family_inputs
        )
        if attention_mask is None and position_ids is not None and cache is None:  # maybe packed (packing.py)
            attention_mask, use_cache, kwargs = packed_language_model_inputs(
                self.language_model, inputs_embeds, position_ids, use_cache, kwargs
            )
        outputs = self._language_model_to_run()(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return ZooVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=mm_encoder_outputs.get("image"),
            video_outputs=mm_encoder_outputs.get("video"),
        )

    def _language_model_to_run(self) -> nn.Module:
        """The module a forward calls for the language model: the ``language_model_stack`` submodule (the decoder stack
        whose output the language model's forward only repackages: native causal-LM heads such as OPTForCausalLM call
        it directly) when calling the language model would run nothing but its forward (no hooks, no instance-level
        ``forward``, not ``compile()``d); else the language model, so that whatever was attached to it runs."""
        language_model = self.language_model
        if self.language_model_stack is None or not _runs_forward_only(language_model):
            return language_model
        return getattr(language_model, self.language_model_stack)

    def text_decode_step(self, model_inputs: dict, kwargs: dict):
        """A decode step with no media (see ``ZooVLMForConditionalGeneration._is_text_decode_step``): the ids, mask and
        positions checked as every call's (one cached token: no vocabulary check), then the language model."""
        input_ids, attention_mask, cache = model_inputs["input_ids"], model_inputs.get("attention_mask"), model_inputs["cache"]
        position_ids = model_inputs.get("position_ids")
        if position_ids is None:
            position_ids = kwargs.pop("position_ids", None)
        if kwargs:
            refuse_decoder_inputs(self.config, kwargs)
        # one token with a cache: the checks read shapes only (no vocabulary, no width)
        check_text_inputs(input_ids, None, attention_mask, True, 0, 0, None, position_ids)
        return self._language_model_to_run()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=model_inputs.get("use_cache"),
            return_dict=True,
            **kwargs,
        )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "The base model (no LM head): the images encoded and placed at their placeholders, then the language model.",
        MODEL_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, KWARGS_DOC,
        returns="`ZooVLMModelOutputWithPast` (`last_hidden_state`, `cache`, `hidden_states`, `attentions`, "
        "`image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMModelOutputWithPast:
        return self.multimodal_forward(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, {"pixel_values": pixel_values},
            {}, mm_encoder_outputs, kwargs,
        )  # fmt: skip


def _count_mismatch_message(modality: str, num_tokens: int, features: torch.Tensor, hidden: int, cache) -> str:
    """Why the placeholders and the features disagree, and the fix; a cache that already holds tokens is named (the
    usual cause then: pixels given again on a later step, or a cache kept from another prompt)."""
    message = (
        f"{modality.capitalize()} features and {modality} tokens do not match: the text has {num_tokens} {modality} "
        f"tokens but the {modality}s produce {features.numel() // max(hidden, 1)} embeddings of width "
        f"{features.shape[-1]} (the language model's width is {hidden})."
    )
    past = cache.get_seq_length() if cache is not None else 0
    if past > 0:
        return message + (
            f" The cache already holds {past} tokens: {modality}s go with the call whose new tokens hold their "
            f"placeholders (the prompt's first forward); drop pixel_values from later steps, and start a new cache for "
            f"another prompt instead of reusing this one."
        )
    return message + (
        " Build the inputs with the model's processor, which expands each placeholder to the right number of tokens."
    )


def _learned_position_limit(language_model: nn.Module, text_config: PreTrainedConfig) -> int | None:
    """``text_config.max_position_embeddings`` when the language model looks positions up in a learned table (an
    embedding module named for positions, as OPT's ``embed_positions``); ``None`` for rotary / relative positions."""
    limit = getattr(text_config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    for name, module in language_model.named_modules():
        if isinstance(module, nn.Embedding) and "position" in name.rsplit(".", 1)[-1]:
            return limit
    return None


def _runs_forward_only(module: nn.Module) -> bool:
    """Whether ``module(...)`` would only run ``type(module).forward``: no hooks of its own and no global module hooks,
    no instance-level ``forward`` (accelerate's device hooks, a patch), not ``module.compile()``d."""
    return not (
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
        or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks
        or "forward" in module.__dict__ or module._compiled_call_impl is not None
    )  # fmt: skip


def given(**inputs) -> dict:
    """The keyword inputs that are not ``None`` (a family's forward hands its given inputs on by name)."""
    return {name: value for name, value in inputs.items() if value is not None}


def _checked_feature_function(function, pixel_name: str):
    """``get_<modality>_features`` that first checks its pixels (a floating tensor) and, for images, the family
    inputs that describe them (the model's ``family_input_checks``); the signature stays the family's
    (``inspect`` follows ``__wrapped__``)."""

    @functools.wraps(function)
    def checked(self, *args, **kwargs):
        pixels = args[0] if args else kwargs.get(pixel_name)
        if pixels is not None:
            check_pixel_input(pixel_name, pixels)
            if pixel_name == "pixel_values":
                for name, check in self.family_input_checks.items():
                    value = kwargs.get(name)
                    if value is not None:
                        check(value, pixels)
        return function(self, *args, **kwargs)

    checked._zoo_checked = True
    return checked


@functools.cache
def _accepted_keywords(model_class: type, method: str) -> frozenset[str]:
    return frozenset(inspect.signature(getattr(model_class, method)).parameters)


class ZooVLMForConditionalGeneration(ZooPreTrainedModel, GenerationMixin):
    """Generic ``model`` + ``lm_head`` pair; a family sets ``base_model_class`` to its ``ZooVLMModel``.

    A family with inputs of its own defines ``forward`` with them and hands them, with the generic ones, to
    :meth:`language_modeling_forward`.
    """

    base_model_class: ClassVar[type[ZooVLMModel]]
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        base = cls.__dict__.get("base_model_class")
        if base is None:
            return
        _require_visible_inputs(cls, _family_input_names(base))
        # read on every decode step: decided once per class
        cls._pixel_input_names = tuple(base.modality_pixel_inputs.values())
        cls._plain_positions = base.compute_position_ids is ZooVLMModel.compute_position_ids
        # stable component names (docs/design.md §4) as properties that read the base model
        for paths in cls.config_class.component_table.values():
            for path in paths:
                name = path.split(".")[0]
                if not hasattr(cls, name):
                    setattr(cls, name, property(functools.partial(_base_attribute, name=name)))

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        self.model = self.base_model_class(config)
        text_config = config.get_text_config()
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        # the tied source is wherever the language model keeps its input embeddings (Llama: `embed_tokens`,
        # OPT: `decoder.embed_tokens`); an instance attribute, read by post_init's tie bookkeeping
        embeddings = f"model.language_model.{self._input_embeddings_path()}"
        self._tied_weights_keys = {"lm_head.weight": f"{embeddings}.weight"}
        self.post_init()
        # a tied head IS the embedding: shard both or neither. transformers adds `embed_tokens` to a language
        # model's TP plan only when it has a plan and the embedding is its direct child (Llama); OPT has neither
        if "lm_head" in self._tp_plan and embeddings not in self._tp_plan:
            self._tp_plan = {key: style for key, style in self._tp_plan.items() if key != "lm_head"}

    def _input_embeddings_path(self) -> str:
        """Module path of the input embeddings inside the language model (e.g. ``decoder.embed_tokens``)."""
        embeddings = self.model.language_model.get_input_embeddings()
        for name, module in self.model.language_model.named_modules():
            if module is embeddings:
                return name
        raise ValueError("the language model's input embeddings are not one of its modules; cannot tie lm_head")

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        """The images' embeddings as the forward places them (``pooler_output``: one entry per image)."""
        return getattr(self.model, self.model.feature_method("image"))(pixel_values, **kwargs)

    def _prepare_multimodal_encoder_kwargs_for_generation(self, model_kwargs: dict) -> dict:
        """generate() encodes each modality's pixels once, before prefill, with the function the forward places
        (``ZooVLMModel.feature_method``), and hands the outputs on as ``mm_encoder_outputs``; the pixels leave the
        model kwargs, the family inputs stay (a position hook may read them)."""
        base = self.model
        encoded = dict(model_kwargs.get("mm_encoder_outputs") or {})
        for modality, pixel_name in base.modality_pixel_inputs.items():
            pixels = model_kwargs.pop(pixel_name, None)
            if pixels is None:
                continue
            if encoded.get(modality) is not None:
                raise ValueError(f"pass either {pixel_name} or pre-computed mm_encoder_outputs['{modality}'], not both")
            function, accepted = base._feature_function(modality)
            names = [name for name in base.family_input_names if name in accepted and name in model_kwargs]
            arguments = {name: model_kwargs[name] for name in names}
            encoded[modality] = function(pixels, **arguments, return_dict=True)
        model_kwargs["mm_encoder_outputs"] = encoded
        return model_kwargs

    def _prepare_model_inputs(self, inputs=None, bos_token_id=None, model_kwargs=None):
        """GenerationMixin's prompt, with the attention mask checked against it once per generate() (before positions
        or masks are derived from it)."""
        inputs, input_name, model_kwargs = super()._prepare_model_inputs(inputs, bos_token_id, model_kwargs)
        if input_name == "input_ids":
            check_generation_mask(model_kwargs.get("attention_mask"), inputs)
        return inputs, input_name, model_kwargs

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """generate()'s positions: the family's position hook (e.g. M-RoPE's (3, B, L)) when it has one.

        generate() then extends them step by step (every leading stream + 1), and chunked prefill slices them.
        """
        text_positions = super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        if type(self.model).compute_position_ids is ZooVLMModel.compute_position_ids:
            return text_positions
        input_ids = model_kwargs.get("input_ids")
        if input_ids is None or input_ids.shape[1] == 0:
            # the prompt tensor, when it holds ids (generation from inputs_embeds has none: the hook gets None)
            is_ids = inputs_tensor.dim() == 2 and not inputs_tensor.is_floating_point()
            input_ids = inputs_tensor if is_ids else None
        family_inputs = {name: model_kwargs[name] for name in self.model.family_input_names if name in model_kwargs}
        positions = self.model.compute_position_ids(
            input_ids,
            model_kwargs.get("inputs_embeds"),
            model_kwargs.get("attention_mask"),
            None,
            model_kwargs.get("cache"),
            **family_inputs,
        )
        return text_positions if positions is None else positions

    def language_modeling_forward(
        self, labels: torch.LongTensor | None, logits_to_keep: int | torch.Tensor, model_inputs: dict, kwargs: dict
    ) -> ZooVLMCausalLMOutputWithPast:
        """What every family's ``forward`` runs: the base model over ``model_inputs`` (its forward's keyword
        inputs), the LM head on the kept positions and, with ``labels``, the loss (``self.loss_function``, which
        shifts the labels and honours ``num_items_in_batch``)."""
        learned = None  # the learned targets after the loss's shift, counted by the label check's host read
        if labels is not None:
            vocab_size = self.config.text_config.vocab_size
            inputs = model_inputs.get("input_ids")
            inputs = inputs if inputs is not None else model_inputs.get("inputs_embeds")
            if isinstance(inputs, torch.Tensor) and inputs.dim() >= 2:
                learned = check_labels(
                    labels, inputs.shape[0], inputs.shape[1], vocab_size=vocab_size, count_learned_from=1
                )
        if labels is None and self._is_text_decode_step(model_inputs):
            # the language model's own output: no media outputs (and no failed attribute lookups for them)
            outputs = self.model.text_decode_step(model_inputs, kwargs)
            image_outputs = video_outputs = None
        else:
            outputs = self.model(**model_inputs, return_dict=True, **kwargs)
            image_outputs, video_outputs = getattr(outputs, "image_outputs", None), getattr(outputs, "video_outputs", None)
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.language_modeling_loss(logits, labels, vocab_size, learned, kwargs)
        return ZooVLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
            video_outputs=video_outputs,
        )

    def _is_text_decode_step(self, model_inputs: dict) -> bool:
        """A decode step that only continues the text: one new token id with a cache, no media, no embeddings, and
        the language model's own positions, or given ones (a family with a position hook passes given positions through:
        generate() gives M-RoPE's every step). It needs no placement, so it goes straight to the language model
        (``ZooVLMModel.text_decode_step``), as native generation does after prefill."""
        if model_inputs.get("cache") is None:
            return False
        if not self._plain_positions and model_inputs.get("position_ids") is None:
            return False
        input_ids = model_inputs.get("input_ids")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] != 1:
            return False
        if model_inputs.get("inputs_embeds") is not None or model_inputs.get("mm_encoder_outputs"):
            return False
        return all(model_inputs.get(name) is None for name in self._pixel_input_names)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "The model with its LM head: logits over the vocabulary and, with `labels`, the loss.",
        MODEL_INPUTS_DOC, LM_HEAD_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, KWARGS_DOC,
        returns="`ZooVLMCausalLMOutputWithPast` (`loss`, `logits`, `cache`, `hidden_states`, `attentions`, "
        "`image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMCausalLMOutputWithPast:
        model_inputs = dict(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs,
        )  # fmt: skip
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


def _base_attribute(self: ZooVLMForConditionalGeneration, name: str):
    return getattr(self.model, name)
