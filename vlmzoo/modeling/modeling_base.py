"""The shared VLM skeleton (DESIGN.md §4): the generic model pair every family subclasses.

Owns: the base ``PreTrainedModel`` flags (attention backends, gradient checkpointing, static cache and
fullgraph compile; ``_no_split_modules`` are gathered from the sub-models by ``post_init``), weight
initialisation of vlmzoo's own parameters and buffers (also after a meta-device load), the component
table's reading (``set_training_stage``, component properties), and the generic pair:

- :class:`ZooVLMModel`: embeddings, encoding each modality once (or taking pre-computed
  ``mm_encoder_outputs``), placing the features at their placeholders with a compile-friendly count
  check, the position hook and the language-model call. A family supplies ``build_components`` and
  ``get_image_features`` (and ``get_video_features`` for video); its extra inputs (``image_sizes``, …)
  are declared once in ``family_input_names`` and reach the feature functions without any forward
  naming them by hand.
- :class:`ZooVLMForConditionalGeneration`: ``model`` + ``lm_head``, tied keys, the loss through
  ``loss_function`` and generation through ``GenerationMixin``.

The language model is a decoder (Llama, OPT, …) or, for families whose config sets
``supports_encoder_decoder_lm`` (BLIP-2 with Flan-T5), an encoder-decoder of the T5 family. Then the prompt,
with the media placed at its placeholders, goes through the LM's encoder once (``encoder_outputs``, which
``generate`` computes before the first decoding step), and the decoder reads ``decoder_input_ids`` (or the
``labels`` shifted right); the head and the loss are the LM's own (T5's output scaling, unshifted labels).

Conventions follow transformers 5.24 (``cache`` with ``past_key_values`` deprecated until 5.40, the
multimodal output classes with ``image_outputs``, in ``outputs.py``), as native ``LlavaForConditionalGeneration``
does.
"""

import functools
import inspect
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.bart.modeling_bart import shift_tokens_right
from transformers.processing_utils import Unpack
from transformers.utils import (
    TransformersKwargs,
    is_torchdynamo_compiling,
    logging,
    torch_compilable_check,
)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .input_checks import (
    check_decoder_inputs,
    check_family_inputs,
    check_generation_mask,
    check_labels,
    check_pixel_input,
    check_text_inputs,
)
from .outputs import (
    ZooVLMCausalLMOutputWithPast,
    ZooVLMModelOutputWithPast,
    ZooVLMSeq2SeqLMOutput,
    ZooVLMSeq2SeqModelOutput,
)

logger = logging.get_logger(__name__)


# the inputs of an encoder-decoder language model's decoder side (in the forward signature of families whose
# config supports one)
SEQ2SEQ_INPUT_NAMES = ("decoder_input_ids", "decoder_attention_mask", "decoder_inputs_embeds", "encoder_outputs")


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

    # ----- components and training stages (DESIGN.md §4, §5) --------------------------------------
    def component_parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """Component name -> its modules / bare parameters, read from the config's component table.

        The table (``config.component_table``) maps each component to attribute paths of the base model;
        the LM head of a ``…ForConditionalGeneration`` belongs to ``language_model``.
        """
        base = self if isinstance(self, ZooVLMModel) else self.model
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
        self.requires_grad_(False)
        counts: dict[str, int] = {}
        for component, modules in parts.items():
            parameters = list(component_parameters(modules))
            if component in trained:
                for parameter in parameters:
                    parameter.requires_grad_(True)
            total = sum(p.numel() for p in parameters)
            counts[component] = total if component in trained else 0
            state = "trainable" if component in trained else "frozen"
            logger.warning("stage %s: %-22s %-9s %12d params", stage, component, state, total)
        return counts


class LearnedTokens(nn.Module):
    """Learned vectors (BLIP-2's query tokens, LLaVA-NeXT's newline, perceiver latents) held as a module.

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
        weight = self.weight if like is None else self.weight.to(like)
        return weight.unsqueeze(0).expand(batch_size, *weight.shape)

    def _init_zoo_weights(self) -> None:
        std = self.std if self.std is not None else self.weight.shape[-1] ** -0.5
        init.normal_(self.weight, mean=0.0, std=std)


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


def _family_input_names(model_class: "type[ZooVLMModel]") -> tuple[str, ...]:
    """The inputs a family adds to the shared forward: its ``family_input_names`` and extra pixel inputs."""
    extra_pixels = [name for name in model_class.modality_pixel_inputs.values() if name != "pixel_values"]
    return (*model_class.family_input_names, *extra_pixels)


def _signature_extras(model_class: type, base_class: "type[ZooVLMModel]") -> tuple[str, ...]:
    """Keyword inputs shown in a forward's signature beyond the generic ones: the family's, plus the decoder-side
    inputs when the family's config accepts an encoder-decoder LM."""
    config_class = getattr(model_class, "config_class", None)
    seq2seq = SEQ2SEQ_INPUT_NAMES if getattr(config_class, "supports_encoder_decoder_lm", False) else ()
    return (*_family_input_names(base_class), *seq2seq)


def bind_pixels_first(args: tuple, kwargs: dict, order: tuple[str, ...], method: str) -> tuple[tuple, dict]:
    """transformers' Q-Former call form: when the first positional argument is floating (pixels, never token ids),
    bind the positional arguments to the names in ``order`` (e.g. ``pixel_values, input_ids, attention_mask``)."""
    if not (order and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point()):
        return args, kwargs
    if len(args) > len(order):
        raise TypeError(
            f"with pixel_values first, {method}() takes at most {len(order)} positional inputs ({', '.join(order)}); "
            f"pass the others by keyword"
        )
    for name, value in zip(order, args):
        if name in kwargs:
            raise TypeError(f"{method}() got multiple values for argument '{name}'")
        kwargs = {**kwargs, name: value}
    return (), kwargs


def _with_family_inputs(forward, names: Iterable[str], pixels_first: tuple[str, ...] = ()):
    """``forward`` whose visible signature also lists the family's inputs (keyword-only, default ``None``).

    generate() validates its keyword arguments and the Trainer keeps dataset columns by ``forward``'s
    signature; the family inputs themselves travel through ``**kwargs``. With ``pixels_first`` (BLIP-2's
    ``("pixel_values", "input_ids", "attention_mask")``), a floating first positional argument - never valid
    token ids - binds in that order, as transformers' ``model(pixel_values, input_ids, attention_mask)``.
    """

    @functools.wraps(forward)
    def family_forward(self, *args, **kwargs):
        args, kwargs = bind_pixels_first(args, kwargs, pixels_first, "forward")
        return forward(self, *args, **kwargs)

    signature = inspect.signature(forward)
    parameters = list(signature.parameters.values())
    *named, var_keyword = parameters
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
        for name in names
        if name not in signature.parameters
    ]
    family_forward.__signature__ = signature.replace(parameters=[*named, *extra, var_keyword])
    return family_forward


class ZooVLMModel(ZooPreTrainedModel):
    """Generic base model: components, placeholders, positions and the language model (no LM head).

    A family subclass implements ``build_components(config)`` (set its vision modules as attributes) and
    ``get_image_features`` (native signature and return type: a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` is the list of each image's embeddings). Optional hooks: ``build_language_model``,
    ``compute_position_ids``; ``modality_pixel_inputs`` adds modalities (``{"video": "pixel_values_videos"}``).
    """

    # modality -> the input holding its pixels; each modality has `config.<modality>_token_id` and
    # `get_<modality>_features`
    modality_pixel_inputs: ClassVar[dict[str, str]] = {"image": "pixel_values"}
    # the family's extra inputs: they reach the feature functions (by their signatures) and the position hook
    family_input_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = _signature_extras(cls, cls)
        if names and "forward" not in cls.__dict__:
            cls.forward = _with_family_inputs(ZooVLMModel.forward, names)
        # the feature functions check their pixels (and image_sizes) themselves: generate() calls them directly
        for modality, pixel_name in cls.modality_pixel_inputs.items():
            method = f"get_{modality}_features"
            function = cls.__dict__.get(method)
            if function is not None and not getattr(function, "_zoo_checked", False):
                setattr(cls, method, _checked_feature_function(function, pixel_name))

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        self.build_components(config)
        self.language_model = self.build_language_model(config.text_config)
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

    def _feature_function(self, modality: str):
        function = getattr(self, f"get_{modality}_features")
        accepted = _accepted_keywords(type(self), f"get_{modality}_features")
        return function, accepted

    def _place_features(
        self,
        modality: str,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        encoder_output: BaseModelOutputWithPooling | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        """Write a modality's embeddings at its placeholders, after checking that the counts agree."""
        token_id = getattr(self.config, f"{modality}_token_id")
        if token_id is None:
            if encoder_output is None:
                return inputs_embeds
            raise ValueError(
                f"config.{modality}_token_id is not set, so the {modality} features have no placeholders; set it to "
                f"the tokenizer's {modality} token id (the processor's `{modality}_token_id`)"
            )
        mask = self.get_placeholder_mask(input_ids, inputs_embeds, token_id)
        if encoder_output is None:
            # native behaviour: placeholders without pixels embed as ordinary tokens; say why once
            if not is_torchdynamo_compiling() and (cache is None or cache.get_seq_length() == 0) and mask.any():
                logger.warning_once(
                    f"The inputs hold {modality} placeholder tokens (id {token_id}) but no {modality} pixels were "
                    f"given: they are embedded as ordinary tokens. Pass the {modality}s the processor made."
                )
            return inputs_embeds
        pooled = encoder_output.pooler_output
        hidden = inputs_embeds.shape[-1]
        # per-item list of (tokens_i, hidden), or a (items, tokens, hidden) tensor -> (total tokens, hidden)
        features = torch.cat([item.reshape(-1, item.shape[-1]) for item in pooled], dim=0)
        num_tokens = mask.sum()
        torch_compilable_check(
            num_tokens * hidden == features.numel(),
            lambda: (
                f"{modality.capitalize()} features and {modality} tokens do not match: the text has {int(num_tokens)} "
                f"{modality} tokens but the {modality}s produce {features.numel() // max(hidden, 1)} embeddings of width "
                f"{features.shape[-1]} (the language model's width is {hidden}). Build the inputs with the model's "
                f"processor, which expands each placeholder to the right number of tokens."
            ),
        )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, pixel_inputs) -> None:
        """Refuse inputs the model cannot compute, with the cause (``input_checks``; cheap, compile-safe)."""
        # runs on every decode step: read the sub-config directly (get_text_config() costs ~20 us per call)
        text_config = getattr(self.config, "text_config", None) or self.config.get_text_config()
        vocab_size = getattr(self.get_input_embeddings(), "num_embeddings", None) or text_config.vocab_size
        check_text_inputs(
            input_ids, inputs_embeds, attention_mask, cache is not None, vocab_size, text_config.hidden_size,
            getattr(self.config, "image_token_id", None), position_ids,
        )  # fmt: skip
        for name, pixels in pixel_inputs.items():
            if pixels is not None:
                check_pixel_input(name, pixels)

    def get_encoder(self, modality: str | None = None):
        """The text encoder of an encoder-decoder LM (as native BLIP-2); a modality's encoder otherwise."""
        if modality is None and self.config.is_encoder_decoder:
            return self.language_model.get_encoder()
        return super().get_encoder(modality=modality)

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
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if any(pixels is not None for pixels in pixel_inputs.values()) and mm_encoder_outputs:
            raise ValueError("pass either pixel_values or pre-computed mm_encoder_outputs, not both")
        self._check_inputs(input_ids, inputs_embeds, attention_mask, position_ids, cache, pixel_inputs)
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
            inputs_embeds = self.get_input_embeddings()(input_ids)
        for modality in self.modality_pixel_inputs:
            inputs_embeds = self._place_features(
                modality, input_ids, inputs_embeds, mm_encoder_outputs.get(modality), cache
            )
        return inputs_embeds, mm_encoder_outputs

    def _split_inputs(self, pixel_values, kwargs: dict) -> tuple[dict, dict, dict]:
        """Take the family inputs, the pixel inputs and the decoder-side inputs out of ``kwargs``."""
        family_inputs = {name: kwargs.pop(name) for name in self.family_input_names if name in kwargs}
        pixel_inputs = {"pixel_values": pixel_values}
        for name in self.modality_pixel_inputs.values():
            if name != "pixel_values":
                pixel_inputs[name] = kwargs.pop(name, None)
        seq2seq_inputs = {name: kwargs.pop(name) for name in SEQ2SEQ_INPUT_NAMES if kwargs.get(name) is not None}
        if seq2seq_inputs and not self.config.is_encoder_decoder:
            raise ValueError(
                f"{sorted(seq2seq_inputs)} are inputs of an encoder-decoder language model, but this model's language "
                f"model ('{self.config.get_text_config().model_type}') is a decoder: pass input_ids only"
            )
        return family_inputs, pixel_inputs, seq2seq_inputs

    # ----- forward ------------------------------------------------------------------------------------
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMModelOutputWithPast | ZooVLMSeq2SeqModelOutput:
        family_inputs, pixel_inputs, seq2seq_inputs = self._split_inputs(pixel_values, kwargs)
        if self.config.is_encoder_decoder:
            if position_ids is not None:
                raise ValueError(
                    f"position_ids are not an input of an encoder-decoder language model "
                    f"('{self.config.get_text_config().model_type}' positions are relative): leave them out"
                )
            return self._encoder_decoder_forward(
                input_ids, inputs_embeds, attention_mask, cache, use_cache, pixel_inputs, family_inputs,
                mm_encoder_outputs, seq2seq_inputs, kwargs,
            )  # fmt: skip
        inputs_embeds, mm_encoder_outputs = self.embed_multimodal(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, pixel_inputs, family_inputs,
            mm_encoder_outputs,
        )  # fmt: skip
        position_ids = self.compute_position_ids(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, **family_inputs
        )
        outputs = self.language_model(
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

    def _encoder_decoder_forward(
        self, input_ids, inputs_embeds, attention_mask, cache, use_cache, pixel_inputs, family_inputs,
        mm_encoder_outputs, seq2seq_inputs: dict, kwargs: dict,
    ) -> ZooVLMSeq2SeqModelOutput:  # fmt: skip
        """An encoder-decoder LM: the prompt with its media through the encoder (unless ``encoder_outputs`` were
        given, as on generate()'s decoding steps), then the decoder over ``decoder_input_ids``."""
        encoder_outputs = seq2seq_inputs.pop("encoder_outputs", None)
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if encoder_outputs is None:
            inputs_embeds, mm_encoder_outputs = self.embed_multimodal(
                input_ids, inputs_embeds, attention_mask, None, None, pixel_inputs, family_inputs, mm_encoder_outputs
            )
            encoder_outputs = self.get_encoder()(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True, **kwargs
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(*encoder_outputs)  # (last_hidden_state, hidden_states, attentions)
        text_config = self.config.get_text_config()
        check_decoder_inputs(
            seq2seq_inputs.get("decoder_input_ids"), seq2seq_inputs.get("decoder_inputs_embeds"),
            seq2seq_inputs.get("decoder_attention_mask"), cache is not None, self.get_input_embeddings().num_embeddings,
            text_config.hidden_size, encoder_outputs.last_hidden_state.shape[0],
        )  # fmt: skip
        if "decoder_input_ids" not in seq2seq_inputs and "decoder_inputs_embeds" not in seq2seq_inputs:
            # no target yet: the decoder's first step, from its start token (as transformers' Florence-2)
            start = self.config.get_text_config(decoder=True).decoder_start_token_id
            batch = encoder_outputs.last_hidden_state.shape[0]
            seq2seq_inputs["decoder_input_ids"] = torch.full(
                (batch, 1), start, dtype=torch.long, device=encoder_outputs.last_hidden_state.device
            )
        outputs = self.language_model(
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **seq2seq_inputs,
            **kwargs,
        )
        return ZooVLMSeq2SeqModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            image_outputs=mm_encoder_outputs.get("image"),
            video_outputs=mm_encoder_outputs.get("video"),
        )


def _checked_feature_function(function, pixel_name: str):
    """``get_<modality>_features`` that first checks its pixels (a floating tensor) and, for images, the family
    inputs that describe them (``image_sizes``); the signature stays the family's (``inspect`` follows
    ``__wrapped__``)."""

    @functools.wraps(function)
    def checked(self, *args, **kwargs):
        pixels = args[0] if args else kwargs.get(pixel_name)
        if pixels is not None:
            check_pixel_input(pixel_name, pixels)
            if pixel_name == "pixel_values":
                check_family_inputs(kwargs, pixels)
        return function(self, *args, **kwargs)

    checked._zoo_checked = True
    return checked


@functools.cache
def _accepted_keywords(model_class: type, method: str) -> frozenset[str]:
    return frozenset(inspect.signature(getattr(model_class, method)).parameters)


class ZooVLMForConditionalGeneration(ZooPreTrainedModel, GenerationMixin):
    """Generic ``model`` + ``lm_head`` pair; a family sets ``base_model_class`` to its ``ZooVLMModel``."""

    base_model_class: ClassVar[type[ZooVLMModel]]
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        base = cls.__dict__.get("base_model_class")
        if base is None:
            return
        names = _signature_extras(cls, base)
        pixels_first = getattr(cls, "native_pixels_first_order", ())
        if (names or pixels_first) and "forward" not in cls.__dict__:
            cls.forward = _with_family_inputs(ZooVLMForConditionalGeneration.forward, names, pixels_first)
        # stable component names (DESIGN.md §4) as properties that read the base model
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
        return self.model.get_image_features(pixel_values, **kwargs)

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """generate()'s positions: the family's position hook (e.g. M-RoPE's (3, B, L)) when it has one.

        generate() then extends them step by step (every leading stream + 1), and chunked prefill slices them.
        """
        check_generation_mask(model_kwargs.get("attention_mask"), inputs_tensor)
        text_positions = super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        if type(self.model).compute_position_ids is ZooVLMModel.compute_position_ids:
            return text_positions
        input_ids = model_kwargs.get("input_ids")
        if input_ids is None or input_ids.shape[1] == 0:
            input_ids = inputs_tensor
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

    def _maybe_prepare_encoder_kwargs_for_generation(
        self, inputs_tensor, model_kwargs, model_input_name, generation_config
    ) -> dict:
        """With an encoder-decoder LM: run the prompt, with its media placed, through the LM's encoder once;
        every decoding step then reads ``encoder_outputs`` (the pixels are not passed on)."""
        if not self.config.is_encoder_decoder:
            return super()._maybe_prepare_encoder_kwargs_for_generation(
                inputs_tensor, model_kwargs, model_input_name, generation_config
            )
        if model_kwargs.get("encoder_outputs") is not None:
            return model_kwargs
        prompt = {"input_ids": None, "inputs_embeds": model_kwargs.pop("inputs_embeds", None)}
        prompt["inputs_embeds" if model_input_name == "inputs_embeds" else "input_ids"] = inputs_tensor
        base = self.model
        pixel_names = set(base.modality_pixel_inputs.values())
        media_names = (*pixel_names, *base.family_input_names)
        media = {name: model_kwargs.pop(name) for name in media_names if name in model_kwargs}
        family_inputs, pixel_inputs, _ = base._split_inputs(media.pop("pixel_values", None), media)
        inputs_embeds, _ = base.embed_multimodal(
            prompt["input_ids"], prompt["inputs_embeds"], model_kwargs.get("attention_mask"), None, None,
            pixel_inputs, family_inputs, model_kwargs.pop("mm_encoder_outputs", None),
        )  # fmt: skip
        model_kwargs["encoder_outputs"] = base.get_encoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=model_kwargs.get("attention_mask"),
            output_attentions=generation_config.output_attentions,
            output_hidden_states=generation_config.output_hidden_states,
            return_dict=True,
        )
        return model_kwargs

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMCausalLMOutputWithPast | ZooVLMSeq2SeqLMOutput:
        base = self.base_model_class
        family_inputs = {name: kwargs.pop(name) for name in _family_input_names(base) if name in kwargs}
        seq2seq_inputs = {name: kwargs.pop(name) for name in SEQ2SEQ_INPUT_NAMES if kwargs.get(name) is not None}
        text_config = self.config.get_text_config()
        if labels is not None and self.config.is_encoder_decoder:
            # the decoder's targets; without decoder inputs the decoder reads them shifted right (as T5 does)
            decoder_ids = seq2seq_inputs.get("decoder_input_ids")
            check_labels(labels, *(decoder_ids.shape if decoder_ids is not None else labels.shape[:2]), decoder=True)
            if "decoder_input_ids" not in seq2seq_inputs and "decoder_inputs_embeds" not in seq2seq_inputs:
                seq2seq_inputs["decoder_input_ids"] = shift_tokens_right(
                    labels, text_config.pad_token_id, text_config.decoder_start_token_id
                )
        elif labels is not None:
            inputs = input_ids if input_ids is not None else inputs_embeds
            if isinstance(inputs, torch.Tensor) and inputs.dim() >= 2:
                check_labels(labels, inputs.shape[0], inputs.shape[1])
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **family_inputs,
            **seq2seq_inputs,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        if self.config.is_encoder_decoder and getattr(text_config, "scale_decoder_outputs", False):
            hidden_states = hidden_states * text_config.d_model**-0.5  # T5's head reads d_model^-0.5-scaled states
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # a decoder's labels are aligned with its inputs (the decoder reads them shifted right): not shifted again
            if self.config.is_encoder_decoder:
                kwargs.setdefault("shift_labels", labels.contiguous())
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=text_config.vocab_size, **kwargs)
        if self.config.is_encoder_decoder:
            return ZooVLMSeq2SeqLMOutput(loss=loss, logits=logits, **{
                name: getattr(outputs, name) for name in ZooVLMSeq2SeqModelOutput.__dataclass_fields__
                if name != "last_hidden_state"
            })  # fmt: skip
        return ZooVLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
        )


def _base_attribute(self: ZooVLMForConditionalGeneration, name: str):
    return getattr(self.model, name)
