"""Hostile inputs to the processing side every family inherits: conversations, padding and truncation, image
processor settings, EXIF orientation, sub-tokenizer folders (issue 20; DESIGN.md §7).

The processing half of ``tests/test_bad_inputs.py``'s table, kept in its own file for size: parametrised over the
family table's tiny presets (the ``case`` fixture), nothing here names a family. Each hostile input is refused with a
clear error (type and message fragment, which names the fix) or gives the exact result of its plain form.
References are independent of the code under test: the tokenizer's own encoding, hand-written renderings, numpy
rotations of the stored JPEG pixels.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import io
import shutil
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import AutoProcessor
from transformers.image_utils import PILImageResampling

import vlmzoo
from vlmzoo import presets
from vlmzoo.processing.chat_templates import vicuna_chat_template
from vlmzoo.processing.image_processing_common import RESAMPLE_NAMES
from vlmzoo.training import VLMDataCollator

from helpers import TINY_CASES, case_id, make_image, user_prompt


@functools.lru_cache(maxsize=None)
def _processor(case):
    return presets.get_processor(*case)


@pytest.fixture
def processor(case):
    return _processor(case)


def _ids(hostile_table) -> list[str]:
    return [entry[0] for entry in hostile_table]


# ----- conversations ------------------------------------------------------------------------------------------
QUESTION = {"type": "text", "text": "What is it?"}
IMAGE = {"type": "image"}


def _user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


ROLE = "unknown or missing role"
CONTENT = "content must be a string or a list of parts"
PART = "a part is"
TEXT = 'a text part needs a string under "text"'
# (id, conversation, error type, message fragment, fragment of the shipped templates' own refusal or None when the
# tokenizer refuses it before any template runs)
CHAT_ERRORS: list[tuple[str, Any, type, str, str | None]] = [
    ("turn-without-role", [{"content": [IMAGE, QUESTION]}], TypeError,
     r"turn 0: a chat turn is a dict with 'role' and 'content', but this one has no 'role' \(\['content'\]\)", ROLE),
    ("role-typo", [_user(IMAGE, QUESTION), {"role": "assistent", "content": "red"}], ValueError,
     r"turn 1: unknown role 'assistent' \(did you mean 'assistant'\?\); valid roles: system, user, assistant", ROLE),
    ("role-capitalised", [{"role": "User", "content": [IMAGE, QUESTION]}], ValueError,
     r"turn 0: unknown role 'User' \(did you mean 'user'\?\)", ROLE),
    ("role-tool", [_user(QUESTION), {"role": "tool", "content": "42"}], ValueError,
     r"turn 1: unknown role 'tool'; valid roles: system, user, assistant", ROLE),
    ("role-a-number", [{"role": 1, "content": "hi"}], TypeError, r"turn 0: 'role' must be a string", ROLE),
    ("content-a-dict", [{"role": "user", "content": QUESTION}], TypeError,
     r"turn 0: 'content' must be a string or a list of parts, got one dict; wrap the part in a list", CONTENT),
    ("content-nested-list", [{"role": "user", "content": [[IMAGE, QUESTION]]}], TypeError,
     r"turn 0, part 0 is a list, but 'content' is one flat list of parts; remove the inner brackets", PART),
    ("content-none", [{"role": "user", "content": None}], TypeError,
     r"turn 0: the turn has no 'content' \(or it is None\)", CONTENT),
    ("content-missing", [{"role": "user"}], TypeError, r"turn 0: the turn has no 'content'", CONTENT),
    ("content-a-number", [{"role": "user", "content": 5}], TypeError,
     r"turn 0: 'content' must be a string or a list of parts .* got int", CONTENT),
    ("part-keyed-content", [_user(IMAGE, {"type": "text", "content": "What is it?"})], TypeError,
     r"turn 0, part 1 is a text part without 'text' \(it has \['content'\]\); write \{'type': 'text', 'text': \.\.\.\}",
     TEXT),
    ("part-type-typo", [_user(IMAGE, {"type": "txt", "text": "What is it?"})], ValueError,
     r"turn 0, part 1 has the unknown type 'txt' \(did you mean 'text'\?\); valid part types: text, image", PART),
    ("part-audio", [_user({"type": "audio", "path": "clip.wav"}, QUESTION)], ValueError,
     r"turn 0, part 0 has the unknown type 'audio'", PART),
    ("part-without-type", [_user(IMAGE, {"text": "What is it?"})], TypeError, r"turn 0, part 1 has no 'type'", PART),
    ("part-a-plain-string", [_user("What is it?")], TypeError,
     r"turn 0, part 0 is a plain string; write it as \{'type': 'text', 'text': 'What is it\?'\}", PART),
    ("text-none", [_user(IMAGE, {"type": "text", "text": None})], TypeError,
     r"turn 0, part 1: 'text' must be a string, got None", TEXT),
    ("text-a-number", [_user(IMAGE, {"type": "text", "text": 5})], TypeError, r"turn 0, part 1: 'text' must be a string, got 5",
     TEXT),
    ("turn-a-string", ["USER: hi"], TypeError, r"turn 0: a chat turn is a dict with 'role' and 'content', got 'USER: hi'",
     None),
    ("system-not-first", [_user(QUESTION), {"role": "system", "content": "Be brief."}], ValueError,
     r"turn 1: a system message must be the first turn", "a system message must be the first turn"),
    ("image-in-an-assistant-turn", [_user(QUESTION), {"role": "assistant", "content": [IMAGE, QUESTION]}], ValueError,
     r"turn 1, part 0 is an image in a turn of role 'assistant', but the chat template writes images in user turns",
     "images go in user turns only"),
    ("image-in-the-system-turn", [{"role": "system", "content": [IMAGE, QUESTION]}, _user(QUESTION)], ValueError,
     r"turn 0, part 0 is an image in a turn of role 'system'", "images go in user turns only"),
    ("empty-conversation", [], ValueError, r"the conversation is empty; give at least one turn", None),
    ("conversation-a-string", "USER: hi", TypeError, r"a conversation must be a list of chat turns .* got str", None),
]


@pytest.mark.parametrize("hostile", CHAT_ERRORS, ids=_ids(CHAT_ERRORS))
def test_processor_refuses_malformed_conversations(processor, hostile):
    _, conversation, error, fragment, _ = hostile
    with pytest.raises(error, match=fragment):
        processor.apply_chat_template(copy.deepcopy(conversation), add_generation_prompt=True)
    with pytest.raises(error, match=fragment):  # checked before any image is read
        processor.apply_chat_template(copy.deepcopy(conversation), add_generation_prompt=True, tokenize=True,
                                      return_dict=True)  # fmt: skip


def test_a_processor_without_videos_refuses_video_parts(processor):
    """Video parts pass only where the processor's chat template writes them (its ``chat_part_types``)."""
    conversation = [_user({"type": "video", "path": "clip.mp4"}, QUESTION)]
    if "video" in processor.chat_part_types:
        assert processor.apply_chat_template(copy.deepcopy(conversation), add_generation_prompt=True)
        return
    with pytest.raises(ValueError, match=r"turn 0, part 0 has the unknown type 'video'"):
        processor.apply_chat_template(copy.deepcopy(conversation), add_generation_prompt=True)
    with pytest.raises(jinja2.exceptions.TemplateError, match=PART):
        processor.tokenizer.apply_chat_template(copy.deepcopy(conversation), chat_template=processor.chat_template,
                                                tokenize=False, add_generation_prompt=True)  # fmt: skip


def test_a_batch_of_conversations_names_the_conversation(processor):
    good = [_user(QUESTION)]
    bad = [_user(QUESTION), {"role": "assistent", "content": "red"}]
    with pytest.raises(ValueError, match=r"conversation 1, turn 1: unknown role 'assistent'"):
        processor.apply_chat_template([good, bad], add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"conversation 0: the conversation is empty"):
        processor.apply_chat_template([[], good], add_generation_prompt=True)


def _with_image(conversation, image) -> Any:
    """``conversation`` with ``image`` in every image part that holds none (the collator reads images from the parts)."""
    conversation = copy.deepcopy(conversation)
    for message in conversation if isinstance(conversation, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image":
                part["image"] = image
    return conversation


@pytest.mark.parametrize("hostile", [h for h in CHAT_ERRORS if h[0] != "empty-conversation"],
                         ids=_ids([h for h in CHAT_ERRORS if h[0] != "empty-conversation"]))  # fmt: skip
def test_collator_refuses_malformed_conversations_with_the_same_check(processor, hostile):
    _, conversation, error, fragment, _ = hostile
    example = {"messages": _with_image(conversation, make_image(40, 30))}
    with pytest.raises(error, match=("example 0, " if fragment.startswith("turn") else "example 0: ") + fragment):
        VLMDataCollator(processor)([example])


IMAGE_SOURCE_ERRORS = [
    ("image-part-without-image", [_user(IMAGE, QUESTION)], r"turn 0, part 0: an image part holds no image; give it one of"),
    ("image-part-with-none", [_user({"type": "image", "image": None}, QUESTION)], r"an image part holds no image"),
    ("image-part-with-two-images", [_user({"type": "image", "image": "a.png", "url": "http://x/b.png"}, QUESTION)],
     r"turn 0, part 0: an image part holds 2 images \(image, url\); give each image its own part"),
    # (transformers turns an OpenAI part into an image part before the processor checks it; the collator sees it raw)
    ("image-url-without-url", [_user({"type": "image_url", "image_url": {}}, QUESTION)],
     r"an image part holds no image|an image_url part needs \{'image_url': \{'url': \.\.\.\}\}"),
]


@pytest.mark.parametrize("hostile", IMAGE_SOURCE_ERRORS, ids=_ids(IMAGE_SOURCE_ERRORS))
def test_reading_images_from_the_messages_needs_one_image_per_part(processor, hostile):
    _, conversation, fragment = hostile
    with pytest.raises(ValueError, match=fragment):
        processor.apply_chat_template(copy.deepcopy(conversation), add_generation_prompt=True, tokenize=True,
                                      return_dict=True)  # fmt: skip
    with pytest.raises(ValueError, match=("example 0, " + fragment) if fragment.startswith("turn") else fragment):
        VLMDataCollator(processor)([{"messages": copy.deepcopy(conversation)}])


def _shipped_templates() -> dict[str, str]:
    """Every chat template vlmzoo ships: the default vicuna_v1 one (with its system prompt), and each tiny processor's."""
    templates = {"vicuna_v1": vicuna_chat_template()}
    for case in TINY_CASES:
        template = _processor(case).chat_template
        if template not in templates.values():
            templates[case_id(case)] = template
    return templates


SHIPPED_TEMPLATES = _shipped_templates()
TEMPLATE_ERRORS = [hostile for hostile in CHAT_ERRORS if hostile[4] is not None]


@pytest.mark.parametrize("template_name", list(SHIPPED_TEMPLATES))
@pytest.mark.parametrize("hostile", TEMPLATE_ERRORS, ids=_ids(TEMPLATE_ERRORS))
def test_shipped_templates_refuse_malformed_conversations_themselves(template_name, hostile):
    """Rendered without a processor (tokenizer.apply_chat_template, serving engines), the templates refuse too."""
    _, conversation, _, _, template_fragment = hostile
    tokenizer = _processor(TINY_CASES[0]).tokenizer
    with pytest.raises(jinja2.exceptions.TemplateError, match=template_fragment):
        tokenizer.apply_chat_template(copy.deepcopy(conversation), chat_template=SHIPPED_TEMPLATES[template_name],
                                      tokenize=False, add_generation_prompt=True)  # fmt: skip


@pytest.mark.parametrize("template_name", list(SHIPPED_TEMPLATES))
def test_shipped_templates_refuse_an_empty_conversation(template_name):
    """transformers' tokenizer refuses it before rendering; a serving engine renders the template itself."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compiled = _compile_jinja_template(SHIPPED_TEMPLATES[template_name])
    with pytest.raises(jinja2.exceptions.TemplateError, match="the conversation is empty"):
        compiled.render(messages=[], bos_token="<s>", eos_token="</s>", add_generation_prompt=True)


def test_the_guard_leaves_valid_conversations_as_the_templates_wrote_them():
    conversation = [
        {"role": "system", "content": "Be brief."},
        _user(IMAGE, QUESTION),
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": "And its color?"},
    ]
    tokenizer = _processor(TINY_CASES[0]).tokenizer
    render = functools.partial(tokenizer.apply_chat_template, tokenize=False, add_generation_prompt=True)
    # the documented vicuna_v1 format, written out by hand (system text + space, USER: / ASSISTANT: turns)
    assert render(conversation, chat_template=vicuna_chat_template()) == (
        "<s>Be brief. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: And its color? ASSISTANT:"
    )
    assert render(conversation, chat_template=vicuna_chat_template(None, user_end="\n", assistant_end="\n",
                                                                   image_placeholder="")) == (
        "<s>Be brief. USER: What is it?\nASSISTANT: A cat.</s>\nUSER: And its color?\nASSISTANT:"
    )  # fmt: skip


@dataclasses.dataclass
class _Message:
    role: str
    content: Any


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


PHOTO = make_image(40, 30, seed=3)
# (id, odd but valid conversation, its plain form): both render and encode exactly alike
CHAT_EQUALS: list[tuple[str, Any, Any]] = [
    ("content-a-string", [{"role": "user", "content": "What is it?"}], [_user(QUESTION)]),
    ("content-a-tuple", [{"role": "user", "content": ({"type": "image", "image": PHOTO}, QUESTION)}],
     [_user({"type": "image", "image": PHOTO}, QUESTION)]),
    ("message-objects", [_Message("user", [{"type": "image", "image": PHOTO}, QUESTION])],
     [_user({"type": "image", "image": PHOTO}, QUESTION)]),
    ("openai-image-url", [_user({"type": "image_url", "image_url": {"url": _data_uri(PHOTO)}}, QUESTION)],
     [_user({"type": "image", "image": PHOTO}, QUESTION)]),
    ("keys-set-to-none", [{"role": "user", "content": [{"type": "image", "image": PHOTO}, QUESTION], "name": None}],
     [_user({"type": "image", "image": PHOTO}, QUESTION)]),
]


@pytest.mark.parametrize("odd", CHAT_EQUALS, ids=_ids(CHAT_EQUALS))
def test_odd_but_valid_conversations_give_the_plain_result(processor, odd):
    _, given, plain = odd
    assert processor.apply_chat_template(given, add_generation_prompt=True) == processor.apply_chat_template(
        plain, add_generation_prompt=True
    )
    if any(part.get("type") != "text" for message in plain for part in message["content"]):
        options = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        odd_inputs, plain_inputs = processor.apply_chat_template(given, **options), processor.apply_chat_template(plain, **options)
        assert odd_inputs.keys() == plain_inputs.keys()
        for key in plain_inputs:
            assert torch.equal(odd_inputs[key], plain_inputs[key]), key


# ----- padding and truncation ---------------------------------------------------------------------------------
def _encode(processor, **options) -> dict:
    prompt = user_prompt(processor, "What color is the shape in the picture?")
    return processor(images=[make_image(40, 30, seed=1)], text=[prompt], **options)


def _rows(encoding, key: str = "input_ids") -> list[int]:
    return list(encoding[key][0])


def _assert_same(encoding, reference) -> None:
    """The language model's side of two encodings is equal (the Q-Former's side pads its own prompt: checked apart)."""
    assert encoding.keys() == reference.keys()
    for key in [key for key in reference if not key.startswith("qformer_")]:
        assert all(np.array_equal(a, b) for a, b in zip(encoding[key], reference[key], strict=True)), key


def test_padding_to_a_shorter_max_length_keeps_the_whole_prompt(processor):
    """As the tokenizer does: padding='max_length' never truncates without truncation=True."""
    full = _encode(processor)
    short = len(_rows(full)) - 3
    prompt = user_prompt(processor, "What color is the shape in the picture?")
    # the reference: the tokenizer alone returns the longer sequence whole
    alone = processor.tokenizer([prompt], padding="max_length", max_length=3)["input_ids"][0]
    assert alone == processor.tokenizer([prompt])["input_ids"][0]
    for max_length in (short, 3):
        _assert_same(_encode(processor, padding="max_length", max_length=max_length), full)
        # padding=True ignores max_length without truncation, as the tokenizer does
        _assert_same(_encode(processor, padding=True, max_length=max_length), full)


def test_padding_to_a_longer_max_length_keeps_every_token(processor):
    full = _encode(processor)
    length = len(_rows(full)) + 4
    padded = _encode(processor, padding="max_length", max_length=length)
    ids, mask = _rows(padded), _rows(padded, "attention_mask")
    assert len(ids) == length and sum(mask) == len(_rows(full))
    kept = [token for token, keep in zip(ids, mask) if keep]
    assert kept == _rows(full)


def test_truncation_that_only_cuts_text_keeps_every_image_token(processor):
    full = _rows(_encode(processor))
    image_tokens = full.count(processor.image_token_id)
    max_length = len(full) - 3
    truncated = _rows(_encode(processor, truncation=True, max_length=max_length))
    assert truncated == full[:max_length]  # the tokenizer's right-side truncation of the same sequence
    assert truncated.count(processor.image_token_id) == image_tokens


@pytest.mark.parametrize("options", [{"truncation": True}, {"truncation": True, "padding": "max_length"}, {}],
                         ids=["truncation", "truncation-and-padding", "max-length-alone-truncates"])  # fmt: skip
def test_truncation_into_the_image_tokens_is_refused(processor, options):
    full = _rows(_encode(processor))
    image_tokens = full.count(processor.image_token_id)
    for max_length in (image_tokens // 2, 2):
        with pytest.raises(ValueError, match=r"cut (the \d+ )?image tokens.*truncation=False"):
            _encode(processor, max_length=max_length, **options)


def test_truncation_from_the_left_into_the_image_tokens_is_refused(case):
    processor = presets.get_processor(*case)
    processor.tokenizer.truncation_side = "left"
    full = _rows(_encode(processor))
    cut_into_images = len(full) - full.index(processor.image_token_id) - 1
    try:
        truncated = _rows(_encode(processor, truncation=True, max_length=cut_into_images))
    except ValueError as error:
        assert "image tokens" in str(error) and "truncation=False" in str(error)
    else:  # a processor that puts the image tokens before the prompt cuts the prompt's start, never them
        assert truncated.count(processor.image_token_id) == full.count(processor.image_token_id)


def test_the_qformer_side_pads_and_truncates_as_its_tokenizer(case):
    processor = _processor(case)
    full = _encode(processor)
    if "qformer_input_ids" not in full:
        assert not processor.extra_tokenizers  # a processor without a second tokenizer has no second side to check
        return
    qformer = processor.qformer_tokenizer
    prompt = user_prompt(processor, "What color is the shape in the picture?")
    untruncated = qformer([prompt])["input_ids"][0]
    padded = _encode(processor, padding="max_length", max_length=3)
    assert _rows(padded, "qformer_input_ids") == untruncated
    truncated = _encode(processor, truncation=True, max_length=len(_rows(full)) - 2)
    reference = qformer([prompt], truncation=True, max_length=len(_rows(full)) - 2)["input_ids"][0]
    assert _rows(truncated, "qformer_input_ids") == reference


# ----- image processor settings -------------------------------------------------------------------------------
BAD_NORMALISATION: list[tuple[str, dict, type, str]] = [
    ("std-zero", {"image_std": [0.26, 0.0, 0.27]}, ValueError, r"image_std must be positive .* got 0\.0 for channel 1"),
    ("std-one-zero-number", {"image_std": 0.0}, ValueError, r"image_std must be positive"),
    ("std-negative", {"image_std": [0.26, -0.26, 0.27]}, ValueError, r"image_std must be positive .* got -0\.26"),
    ("std-nan", {"image_std": [0.26, float("nan"), 0.27]}, ValueError, r"image_std must be finite, got nan for channel 1"),
    ("std-inf", {"image_std": [float("inf")] * 3}, ValueError, r"image_std must be finite, got inf"),
    ("mean-nan", {"image_mean": [0.5, 0.5, float("nan")]}, ValueError, r"image_mean must be finite, got nan for channel 2"),
    ("mean-inf", {"image_mean": [float("-inf"), 0.5, 0.5]}, ValueError, r"image_mean must be finite, got -inf"),
    ("mean-two-values", {"image_mean": [0.5, 0.5]}, ValueError,
     r"image_mean must be one number or 3 \(one per RGB channel\), got 2"),
    ("mean-four-values", {"image_mean": [0.5] * 4}, ValueError, r"image_mean must be one number or 3 .* got 4"),
    ("std-as-text", {"image_std": ["0.5", "0.5", "0.5"]}, TypeError, r"image_std must hold numbers, got '0\.5'"),
    ("mean-booleans", {"image_mean": [True, False, True]}, TypeError, r"image_mean must hold numbers, got True"),
    ("resample-unknown-name", {"resample": "cubic"}, ValueError,
     r"unknown resample 'cubic' \(did you mean 'bicubic'\?\); valid names: nearest, bilinear, bicubic, lanczos, box, hamming"),
    ("resample-unknown-number", {"resample": 9}, ValueError, r"resample=9 is no PIL resampling filter; use one of 0 \(nearest\)"),
    ("resample-a-boolean", {"resample": True}, TypeError, r"resample must be a PIL\.Image\.Resampling, its int value or a name"),
    ("resample-a-float", {"resample": 3.0}, TypeError, r"resample must be a PIL\.Image\.Resampling"),
]


def _rebuilt(image_processor, **changes):
    """A new image processor of the same class and settings, with ``changes``."""
    settings = {k: v for k, v in image_processor.to_dict().items() if k != "image_processor_type"}
    return type(image_processor)(**{**settings, **changes})


@pytest.mark.parametrize("hostile", BAD_NORMALISATION, ids=_ids(BAD_NORMALISATION))
def test_bad_image_settings_are_refused_at_construction_and_per_call(processor, hostile):
    _, settings, error, fragment = hostile
    image_processor = processor.image_processor
    with pytest.raises(error, match=fragment):
        _rebuilt(image_processor, **settings)
    with pytest.raises(error, match=fragment):
        image_processor(images=[PHOTO], return_tensors="pt", **settings)
    with pytest.raises(error, match=fragment):  # through the processor, as a per-call image option
        processor(images=[PHOTO], text=[user_prompt(processor, "Hi")], return_tensors="pt", **settings)


def _pixels(image_processor, image=PHOTO, **options) -> torch.Tensor:
    return image_processor(images=[image], return_tensors="pt", **options)["pixel_values"]


@pytest.mark.parametrize("name", list(RESAMPLE_NAMES))
def test_resample_names_act_as_their_filter(processor, name):
    image_processor = processor.image_processor
    filter_ = getattr(PILImageResampling, name.upper())
    reference = _pixels(image_processor, resample=filter_)
    for spelling in (name, name.upper(), int(filter_)):
        assert torch.equal(_pixels(image_processor, resample=spelling), reference), spelling
    built = _rebuilt(image_processor, resample=name)
    assert built.resample == filter_ and built.to_dict()["resample"] == int(filter_)
    assert torch.equal(_pixels(built), reference)


def test_a_bicubic_name_is_not_bilinear(processor):
    """The silent failure: transformers' PIL backend resizes with bilinear for any string."""
    image_processor = processor.image_processor
    bicubic = _pixels(image_processor, resample="bicubic")
    assert torch.equal(bicubic, _pixels(image_processor, resample=PILImageResampling.BICUBIC))
    assert not torch.equal(bicubic, _pixels(image_processor, resample=PILImageResampling.BILINEAR))


def test_every_exported_image_processor_checks_its_settings():
    for image_processor_class in (vlmzoo.ZooFixedResImageProcessor, vlmzoo.ZooAnyResImageProcessor,
                                  vlmzoo.ZooResizeImageProcessor):  # fmt: skip
        with pytest.raises(ValueError, match=r"image_std must be positive"):
            image_processor_class(image_std=[0.2, 0.0, 0.2])
        with pytest.raises(ValueError, match=r"image_mean must be finite"):
            image_processor_class(image_mean=[0.5, float("nan"), 0.5])
        image_processor = image_processor_class(resample="nearest")
        assert image_processor.resample == PILImageResampling.NEAREST
        with pytest.raises(ValueError, match=r"image_std must be finite"):
            image_processor(images=[PHOTO], image_std=[float("nan")] * 3)


def test_a_single_mean_number_pads_to_square_as_three_equal_ones():
    options = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, pad_to_square=True)
    one = vlmzoo.ZooFixedResImageProcessor(image_mean=0.5, image_std=0.25, **options)
    three = vlmzoo.ZooFixedResImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3, **options)
    assert torch.equal(_pixels(one), _pixels(three))


# ----- EXIF orientation ---------------------------------------------------------------------------------------
# orientation tag -> the upright image from the stored pixels (numpy, independent of PIL's exif_transpose)
UPRIGHT = {
    2: lambda raw: raw[:, ::-1],  # mirrored left-right
    3: lambda raw: raw[::-1, ::-1],  # turned 180 degrees
    6: lambda raw: np.rot90(raw, k=-1),  # stored turned 90 degrees counter-clockwise: turn it clockwise
    8: lambda raw: np.rot90(raw, k=1),
}


@pytest.fixture(scope="module")
def rotated_jpegs(tmp_path_factory) -> dict[int, Path]:
    """One JPEG per orientation tag, built here: a non-square photo whose EXIF says how to turn it."""
    root = tmp_path_factory.mktemp("exif")
    paths = {}
    for orientation in UPRIGHT:
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = root / f"orientation-{orientation}.jpg"
        make_image(48, 24, seed=orientation).save(path, format="JPEG", quality=95, exif=exif.tobytes())
        paths[orientation] = path
    return paths


@pytest.mark.parametrize("orientation", list(UPRIGHT))
def test_an_exif_rotated_jpeg_gives_the_upright_pixels_in_every_form(processor, rotated_jpegs, orientation):
    path = rotated_jpegs[orientation]
    data = path.read_bytes()
    with Image.open(path) as stored:
        assert stored.getexif()[0x0112] == orientation  # the tag is there
        raw = np.asarray(stored.convert("RGB"))  # the stored pixels, not turned
    upright = Image.fromarray(np.ascontiguousarray(UPRIGHT[orientation](raw)))
    image_processor = processor.image_processor
    reference = _pixels(image_processor, upright)
    forms = {
        "path": str(path), "pathlib": path, "bytes": data, "base64": base64.b64encode(data).decode(),
        "data-uri": "data:image/jpeg;base64," + base64.b64encode(data).decode(), "opened": Image.open(path),
        "turned-already": ImageOps.exif_transpose(Image.open(path)),
    }  # fmt: skip
    for name, form in forms.items():
        assert torch.equal(_pixels(image_processor, form), reference), name
    # and through the processor and a chat-template batch, as a path and as the opened file
    prompt = user_prompt(processor, "Hi")
    by_path = processor(images=[str(path)], text=[prompt], return_tensors="pt")
    opened = processor(images=[Image.open(path)], text=[prompt], return_tensors="pt")
    for key in opened:
        assert torch.equal(by_path[key], opened[key]), key
    assert torch.equal(opened["pixel_values"], processor(images=[upright], text=[prompt], return_tensors="pt")["pixel_values"])


# ----- sub-tokenizer folders ----------------------------------------------------------------------------------
def test_a_missing_sub_tokenizer_folder_is_named(processor, tmp_path):
    saved_dir = tmp_path / "saved"
    processor.save_pretrained(saved_dir)
    loaded = AutoProcessor.from_pretrained(saved_dir)
    assert type(loaded) is type(processor)
    for name in processor.extra_tokenizers:  # each extra tokenizer comes back from its own folder, as saved
        saved, back = getattr(processor, name), getattr(loaded, name)
        assert back.padding_side == saved.padding_side and back.get_vocab() == saved.get_vocab()
    for name in processor.extra_tokenizers:
        broken = tmp_path / f"without-{name}"
        shutil.copytree(saved_dir, broken)
        shutil.rmtree(broken / name)
        fragment = rf"has no '{name}/' folder, where {type(processor).__name__} keeps its {name}: save the processor"
        with pytest.raises(ValueError, match=fragment):
            AutoProcessor.from_pretrained(broken)
        with pytest.raises(ValueError, match=fragment):
            type(processor).from_pretrained(broken)
        (broken / name).mkdir()  # the folder there, but empty
        with pytest.raises(ValueError, match=rf"could not load its {name} from the '{name}/' folder"):
            AutoProcessor.from_pretrained(broken)


def test_a_truncating_call_before_saving_leaves_the_saved_processor_untruncated(case, tmp_path):
    """The tokenizers' backends keep the last call's truncation; saved into tokenizer.json it would become the
    reloaded tokenizer's default max_length, and the reloaded processor would truncate every prompt."""
    processor = presets.get_processor(*case)
    whole = _encode(processor)
    max_length = len(_rows(whole)) - 2
    _encode(processor, truncation=True, max_length=max_length, padding="max_length")  # cuts text only
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    _assert_same(_encode(reloaded), whole)
    for name in ("tokenizer", *processor.extra_tokenizers):
        assert getattr(reloaded, name).init_kwargs.get("max_length") is None, name
    # the processor that saved keeps working as before
    assert _rows(_encode(processor, truncation=True, max_length=max_length)) == _rows(whole)[:max_length]
