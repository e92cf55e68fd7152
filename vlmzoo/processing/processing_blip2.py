"""``ZooBlip2Processor`` and ``ZooInstructBlipProcessor``: the Q-Former families' processors.

As transformers 5.24's ``Blip2Processor`` / ``InstructBlipProcessor``: every prompt gets ``num_query_tokens``
image placeholders *before* its BOS token (one image per prompt; the model writes one embedding per learned
query there), images are resized to the tower's square size (``ZooResizeImageProcessor``), and InstructBLIP's
processor tokenizes each prompt a second time with the Q-Former's tokenizer (``qformer_input_ids``,
``qformer_attention_mask``). One deliberate difference: padding is applied after the placeholders are prepended,
so left padding gives ``[pad…, <image>…, <s>, prompt]`` (transformers puts the pads between the placeholders and
the prompt), and the Q-Former's tokenizer pads on its own side (transformers hands it the LM tokenizer's
``padding_side``, shifting the absolute positions of left-padded rows); unpadded and right-padded outputs are
identical to transformers'. ``padding``, ``truncation`` and ``max_length`` follow the tokenizer's own rules (e.g.
``padding="max_length"`` with a shorter ``max_length`` keeps the whole prompt unless ``truncation=True``);
truncation cuts the prompt's own tokens, and a ``max_length`` that leaves no room after the placeholders is refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

from .chat_templates import vicuna_chat_template
from .image_processing_resize import ZooResizeImageProcessor
from .processing_common import ZooProcessorMixin, check_images_per_sample

DEFAULT_IMAGE_TOKEN = "<image>"
# USER: … ASSISTANT: turns; images write nothing (their tokens go before the prompt)
QFORMER_CHAT_TEMPLATE = vicuna_chat_template(system_prompt=None, user_end="\n", assistant_end="\n", image_placeholder="")


def _padded_length(padding_strategy: PaddingStrategy, lengths: list[int], max_length: int | None,
                   multiple: int | None) -> int:
    """The length every row is padded to (0: no padding), as the tokenizer's padding strategy means it (rows already
    longer stay as they are: padding never cuts)."""
    if padding_strategy == PaddingStrategy.DO_NOT_PAD:
        return 0
    target = max_length if padding_strategy == PaddingStrategy.MAX_LENGTH else max(lengths)
    if multiple:
        target = -(-target // multiple) * multiple
    return target


class ZooBlip2Processor(ZooProcessorMixin):
    r"""
    Args:
        image_processor: a ``ZooResizeImageProcessor`` at the vision tower's size.
        tokenizer: the language model's tokenizer; must know ``image_token``.
        num_query_tokens: the model config's ``num_query_tokens`` (image tokens per image).
        image_token: the placeholder string (default: the tokenizer's ``image_token``, else ``<image>``).
        chat_template: Jinja template; it must not write the image placeholder (the processor places it).
    """

    text_kwargs = {"return_token_type_ids": False}

    def __init__(self, image_processor=None, tokenizer=None, num_query_tokens: int = 32, image_token=None,
                 chat_template=None, **kwargs):
        if not isinstance(num_query_tokens, int) or num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be a positive integer, got {num_query_tokens!r}")
        self.num_query_tokens = num_query_tokens
        self.image_token = str(image_token or getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN)
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no '{self.image_token}' token; add it as a special token first")
        self.image_token_id = image_token_id
        self._init_sub_processors(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def _init_sub_processors(self, image_processor, tokenizer, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("pass images, text or both")
        output_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = output_kwargs["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        encoding = {}
        if images is not None:
            # paths / URLs opened in their own mode (shared with every processor), then one image per prompt
            images = self.image_processor.fetch_images(images)
            check_images_per_sample(images, text, lambda prompt: 1, "one image per prompt")
            images = make_flat_list_of_images(images)
        if text is not None:
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
                raise TypeError("text must be a string or a non-empty list of strings")
            if images is not None and len(images) != len(texts):
                raise ValueError(
                    f"got {len(images)} images for {len(texts)} prompts: the number of images ({len(images)}) must "
                    f"match the number of prompts, the Q-Former families take one image per prompt"
                )
            if images is not None and any(self.image_token in t for t in texts):
                raise ValueError(
                    f"the prompt contains '{self.image_token}', but the processor places the {self.num_query_tokens} "
                    f"image tokens before the prompt itself; remove it from the text"
                )
            encoding.update(self._qformer_encoding(texts, dict(text_kwargs)))
            encoding.update(self._text_encoding(texts, text_kwargs, with_images=images is not None))
        if images is not None:
            encoding.update(self.image_processor(images, **output_kwargs["images_kwargs"]))
        return BatchFeature(encoding, tensor_type=return_tensors)

    def _qformer_encoding(self, texts: list[str], text_kwargs: dict) -> dict:
        return {}

    def _text_encoding(self, texts: list[str], text_kwargs: dict, with_images: bool) -> dict:
        """Tokenize, prepend ``num_query_tokens`` placeholders (no BOS before them), then pad.

        ``padding``, ``truncation`` and ``max_length`` mean what they mean to the tokenizer (its own rules decide
        whether to truncate: e.g. ``padding="max_length"`` with a shorter ``max_length`` and no ``truncation``
        keeps the whole prompt, a ``max_length`` without padding truncates); truncation cuts the prompt's own
        tokens, never the placeholders, and a ``max_length`` that leaves no room after them is refused.
        """
        if not with_images:
            return dict(self.tokenizer(texts, **text_kwargs))
        padding = text_kwargs.pop("padding", False)
        truncation = text_kwargs.pop("truncation", None)
        pad_to_multiple_of = text_kwargs.pop("pad_to_multiple_of", None)
        max_length = text_kwargs.pop("max_length", None)
        padding_side = text_kwargs.pop("padding_side", None) or self.tokenizer.padding_side
        padding_strategy, truncation_strategy, max_length, _ = self.tokenizer._get_padding_truncation_strategies(
            padding=padding, truncation=truncation, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
            verbose=False,
        )  # fmt: skip
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE:
            if max_length <= self.num_query_tokens:
                raise ValueError(
                    f"truncation to max_length={max_length} would cut the {self.num_query_tokens} image tokens each "
                    f"prompt starts with; raise max_length above {self.num_query_tokens} (the image tokens plus the "
                    f"prompt's own tokens) or pass truncation=False"
                )
            encoded = self.tokenizer(texts, padding=False, truncation=truncation_strategy,
                                     max_length=max_length - self.num_query_tokens, **text_kwargs)  # fmt: skip
        else:
            encoded = self.tokenizer(texts, padding=False, truncation=False, **text_kwargs)
        # what each key holds at a placeholder / at padding: offsets of placeholders are empty (0, 0), so
        # chat-template assistant masks never cover them
        fills = {"input_ids": (self.image_token_id, self.tokenizer.pad_token_id), "attention_mask": (1, 0),
                 "offset_mapping": ((0, 0), (0, 0))}  # fmt: skip
        features = {key: [[fills.get(key, (0, 0))[0]] * self.num_query_tokens + list(row) for row in rows]
                    for key, rows in encoded.items()}  # fmt: skip
        lengths = [len(row) for row in features["input_ids"]]
        target = _padded_length(padding_strategy, lengths, max_length, pad_to_multiple_of)
        for key, rows in features.items():
            fill = fills.get(key, (0, 0))[1]
            for index, row in enumerate(rows):
                extra = [fill] * (target - len(row)) if target > len(row) else []
                rows[index] = extra + row if padding_side == "left" else row + extra
        return features

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Image tokens (and pixel batches) per image, without processing pixels: always ``num_query_tokens``."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(
            num_image_tokens=[self.num_query_tokens] * len(image_sizes), num_image_patches=[1] * len(image_sizes)
        )

    @classmethod
    def from_model_config(cls, config, tokenizer, *, image_processor_settings=None, image_token=None,
                          chat_template=None, **extra):
        """The processor a ``ZooBlip2Config`` needs (presets, converters, docs).

        ``chat_template`` defaults to the vicuna-style ``USER: … ASSISTANT:`` template without image placeholders
        (the processor puts the image tokens before the prompt); ``image_processor_settings`` (e.g. a
        checkpoint's saved mean / std) override the image processor's defaults.
        """
        side = config.vision_config.image_size
        settings = {"size": {"height": side, "width": side}, **(image_processor_settings or {})}
        return cls(
            image_processor=ZooResizeImageProcessor(**settings),
            tokenizer=tokenizer,
            num_query_tokens=config.num_query_tokens,
            image_token=image_token,
            chat_template=chat_template if chat_template is not None else QFORMER_CHAT_TEMPLATE,
            **extra,
        )


class ZooInstructBlipProcessor(ZooBlip2Processor):
    r"""
    InstructBLIP: also tokenizes every prompt with the Q-Former's tokenizer (``qformer_input_ids``,
    ``qformer_attention_mask``; same padding and truncation options as the text).

    Args:
        image_processor, tokenizer, num_query_tokens, image_token, chat_template: as ``ZooBlip2Processor``.
        qformer_tokenizer: the Q-Former's tokenizer (BERT's in the paper); pads on the right.
    """

    # the Q-Former's tokenizer: absolute positions (BERT), so its tiny stand-in pads on the right
    extra_tokenizers: ClassVar[dict[str, dict[str, Any]]] = {"qformer_tokenizer": {"padding_side": "right"}}

    def __init__(self, image_processor=None, tokenizer=None, qformer_tokenizer=None, num_query_tokens: int = 32,
                 image_token=None, chat_template=None, **kwargs):
        if qformer_tokenizer is None:
            raise ValueError("InstructBLIP's processor needs the Q-Former's tokenizer (qformer_tokenizer)")
        self._qformer_tokenizer_arg = qformer_tokenizer
        super().__init__(image_processor, tokenizer, num_query_tokens=num_query_tokens, image_token=image_token,
                         chat_template=chat_template, **kwargs)

    def _init_sub_processors(self, image_processor, tokenizer, chat_template=None, **kwargs):
        qformer_tokenizer = self.__dict__.pop("_qformer_tokenizer_arg")
        ProcessorMixin.__init__(self, image_processor, tokenizer, qformer_tokenizer, chat_template=chat_template)

    def _qformer_encoding(self, texts: list[str], text_kwargs: dict) -> dict:
        # the Q-Former's positions are absolute (BERT): it pads on its own side, never the LM tokenizer's left
        # (transformers passes the LM tokenizer's padding_side on, so its left-padded Q-Former rows shift)
        text_kwargs.pop("padding_side", None)
        encoded = self.qformer_tokenizer(texts, **text_kwargs)
        return {"qformer_input_ids": encoded["input_ids"], "qformer_attention_mask": encoded["attention_mask"]}

    def prompt_only_inputs(self, prompts: list[str], **text_kwargs) -> dict:
        """The Q-Former's instruction inputs for ``prompts`` (the rendered prompts *without* the replies).

        Training collators call this: the Q-Former reads the instruction only, never the answer it is trained to
        produce (InstructBLIP feeds LAVIS's ``text_input``, not ``text_output``, to the Q-Former), so a batch made
        from whole conversations takes its ``qformer_*`` inputs from here.
        """
        text_kwargs.setdefault("padding", True)
        text_kwargs.setdefault("return_tensors", "pt")
        return self._qformer_encoding(list(prompts), text_kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer, *, qformer_tokenizer, **options):
        """As ``ZooBlip2Processor.from_model_config``, with the Q-Former's tokenizer."""
        return super().from_model_config(config, tokenizer, qformer_tokenizer=qformer_tokenizer, **options)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names
        return names + ["qformer_input_ids", "qformer_attention_mask"]


__all__ = ["ZooBlip2Processor", "ZooInstructBlipProcessor"]
