"""Hostile inputs every family inherits (DESIGN.md §7): each is refused with a clear error or gives the exact result.

Parametrised over the family table's tiny presets (the ``case`` fixture); nothing here names a family. Inputs
that only some families take (``image_sizes``, ``vision_feature_layer``) run on the cases whose model or config
declares them. Each hostile input is one entry of a table: what is passed, the exception type and a fragment of
its message (which says what to change), or, for inputs that are odd but valid, the exact result they must
give (``torch.equal`` against the plain form of the same image or batch). The processing side's hostile inputs
(conversations, padding and truncation, image options, EXIF orientation, sub-tokenizer folders) are in
``tests/test_bad_inputs_processing.py``, parametrised the same way.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText

import vlmzoo
from vlmzoo import presets
from vlmzoo.training import VLMDataCollator

from helpers import TINY_CASES, build, case_id, make_image, two_prompt_batch

UNREACHABLE_URL = "http://127.0.0.1:9/x.png"  # the discard port: nothing listens, the connection is refused at once


@dataclass
class Context:
    """One tiny model with its processor and a two-prompt batch (built once per case; tests must not mutate them)."""

    model: Any
    processor: Any
    batch: dict
    images: list
    texts: list

    def pixels(self, image, **kwargs) -> torch.Tensor:
        return self.processor.image_processor(images=[image], return_tensors="pt", **kwargs)["pixel_values"]

    def with_batch(self, **changes) -> dict:
        return {**self.batch, **changes}


@functools.lru_cache(maxsize=None)
def _context(case) -> Context:
    model, processor = build(case)
    batch, images, texts = two_prompt_batch(processor)
    return Context(model, processor, dict(batch), images, texts)


@pytest.fixture
def ctx(case) -> Context:
    return _context(case)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Image files of odd kinds, and things that are not images."""
    root = tmp_path_factory.mktemp("images")
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # transparent red, with a half-opaque green corner
    rgba.paste((0, 255, 0, 128), (0, 0, 20, 15))
    rgba.save(root / "rgba.png")
    Image.fromarray(np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)).save(root / "gray16.png")
    make_image(50, 30, seed=5).save(root / "photo.png")
    (root / "notes.png").write_text("this is not a PNG")
    (root / "folder").mkdir()
    return root


def _family_declares(name: str) -> list:
    """The tiny cases whose model takes ``name`` as a family input, or whose config has the field ``name``."""
    chosen = []
    for family, preset in TINY_CASES:
        entry = vlmzoo.get_family(family)
        config = presets.get_config(family, preset)
        if name in entry.model_class.family_input_names or hasattr(config, name):
            chosen.append((family, preset))
    return chosen


def _hostile_ids(table) -> list[str]:
    return [entry[0] for entry in table]


# ----- images given to the image processor: refused ---------------------------------------------------------------
IMAGE_ERRORS: list[tuple[str, Callable[[Path], Any], type, str]] = [
    ("url-unreachable", lambda f: UNREACHABLE_URL, ConnectionError, r"could not fetch the image at http://127\.0\.0\.1:9/x\.png"),
    ("missing-file", lambda f: str(f / "missing.png"), ValueError, r"image file '.*missing\.png' does not exist"),
    # a missing path made only of base64 characters is still a missing file, not "bad base64 data"
    ("missing-file-named-like-base64", lambda f: str(f / "img0001"), ValueError, r"image file '.*/img0001' does not exist"),
    ("missing-relative-path", lambda f: "no/such/dir/photo.jpg", ValueError,
     r"image file 'no/such/dir/photo\.jpg' does not exist \(looked for /.*no/such/dir/photo\.jpg\)"),
    ("long-base64-of-no-image", lambda f: base64.b64encode(b"not an image at all " * 8).decode(), ValueError,
     "base64 image data is not an image"),
    ("empty-string", lambda f: "", ValueError, "an empty string is not an image"),
    ("bytes-of-no-image", lambda f: b"GIF89a but not really", ValueError, r"the image data \(bytes\) is not an image in a format PIL can read"),
    ("directory", lambda f: str(f / "folder"), ValueError, "is a directory"),
    ("text-file-named-png", lambda f: f / "notes.png", ValueError, r"notes\.png is not an image in a format PIL can read"),
    ("bad-base64", lambda f: "data:image/png;base64,aGVsbG8=", ValueError, "base64 image data is not an image"),
    ("float-above-255", lambda f: np.full((8, 8, 3), 300.0), ValueError, r"float image values must lie in \[0, 1\]"),
    ("float-negative", lambda f: np.full((8, 8, 3), -0.5), ValueError, r"got values in \[-0\.5, -0\.5\]"),
    ("float-nan", lambda f: np.full((8, 8, 3), np.nan), ValueError, "NaN or infinite"),
    ("int-above-255", lambda f: np.full((8, 8, 3), 300, dtype=np.int32), ValueError, r"integer image values must lie in 0\.\.255"),
    ("int-negative", lambda f: np.full((8, 8, 3), -1, dtype=np.int64), ValueError, r"values in \[-1, -1\]"),
    ("complex-array", lambda f: np.zeros((8, 8, 3), dtype=np.complex64), TypeError, "unsupported image array dtype"),
    ("dict-object", lambda f: {"pixels": 1}, TypeError, "images must be PIL images, numpy arrays, torch tensors"),
    ("empty-2d-array", lambda f: np.zeros((0, 7), dtype=np.uint8), ValueError, "empty image"),
    ("one-pixel-tall-rgb-array", lambda f: _rgb()[:1], ValueError,
     r"shape \(1, 40, 3\) reads as channels-first and as channels-last; pass input_data_format"),
    ("three-pixel-tall-rgb-array", lambda f: _rgb()[:3], ValueError, "reads as channels-first and as channels-last"),
]


@pytest.mark.parametrize("hostile", IMAGE_ERRORS, ids=_hostile_ids(IMAGE_ERRORS))
def test_bad_images_are_refused(ctx, files, hostile):
    _, make, error, fragment = hostile
    started = time.monotonic()
    with pytest.raises(error, match=fragment):
        ctx.pixels(make(files))
    assert time.monotonic() - started < 5  # a refused URL fails fast, well inside the fetch timeout


# ----- images of odd forms: exactly the pixels of the plain form ----------------------------------------------------
def _gray16() -> np.ndarray:
    return np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)


def _rgb() -> np.ndarray:
    return np.asarray(make_image(40, 30, seed=6))


IMAGE_EQUALS: list[tuple[str, Callable[[Path], tuple[Any, Any, dict]]]] = [
    # (id, files -> (odd form, plain form, image-processor kwargs))
    ("rgba-png-path", lambda f: (str(f / "rgba.png"), Image.open(f / "rgba.png"), {})),
    ("rgba-png-pathlib", lambda f: (f / "rgba.png", Image.open(f / "rgba.png"), {})),
    ("16-bit-png-path", lambda f: (str(f / "gray16.png"), Image.open(f / "gray16.png"), {})),
    ("base64-data-uri", lambda f: (
        "data:image/png;base64," + base64.b64encode((f / "photo.png").read_bytes()).decode(), Image.open(f / "photo.png"), {},
    )),
    ("float32-in-0-1", lambda f: (_rgb().astype(np.float32) / 255, _rgb(), {})),
    ("float64-tensor-with-grad", lambda f: (torch.tensor(_rgb() / 255.0, requires_grad=True), _rgb(), {})),
    ("float16-tensor", lambda f: (torch.tensor(_rgb(), dtype=torch.float16), _rgb(), {})),
    ("float-0-255", lambda f: (_rgb().astype(np.float32), _rgb(), {})),
    ("float-pre-scaled-no-rescale", lambda f: (_rgb().astype(np.float32) / 255, _rgb(), {"do_rescale": False})),
    ("int64-array", lambda f: (_rgb().astype(np.int64), _rgb(), {})),
    ("2d-uint8", lambda f: (_rgb()[..., 0], Image.fromarray(_rgb()[..., 0]), {})),
    ("2d-tensor", lambda f: (torch.from_numpy(_rgb()[..., 1].copy()), Image.fromarray(_rgb()[..., 1]), {})),
    ("uint16-array", lambda f: (_gray16(), Image.fromarray(np.round(_gray16() / 257).astype(np.uint8)), {})),
    ("bool-array", lambda f: (_rgb()[..., 0] > 127, Image.fromarray(_rgb()[..., 0] > 127), {})),
    ("channels-first", lambda f: (_rgb().transpose(2, 0, 1), _rgb(), {})),
    ("short-array-with-its-layout-named", lambda f: (_rgb()[:3], Image.fromarray(_rgb()[:3]), {"input_data_format": "channels_last"})),
    ("2d-array-three-wide", lambda f: (_rgb()[:, :3, 0], Image.fromarray(_rgb()[:, :3, 0].copy()), {})),
    # byte order holds no meaning for the values: big-endian arrays read as the same little-endian ones
    ("uint16-big-endian", lambda f: (_gray16().astype(">u2"), _gray16(), {})),
    ("uint16-rgb-big-endian", lambda f: (np.stack([_gray16()] * 3, -1).astype(">u2"), np.stack([_gray16()] * 3, -1), {})),
    ("float32-big-endian", lambda f: ((_rgb() / 255).astype(">f4"), _rgb(), {})),
    ("int16-big-endian", lambda f: (_rgb().astype(">i2"), _rgb(), {})),
    ("png-bytes", lambda f: ((f / "photo.png").read_bytes(), Image.open(f / "photo.png"), {})),
    ("raw-base64-string", lambda f: (base64.b64encode((f / "photo.png").read_bytes()).decode(), Image.open(f / "photo.png"), {})),
]


@pytest.mark.parametrize("odd", IMAGE_EQUALS, ids=_hostile_ids(IMAGE_EQUALS))
def test_odd_image_forms_give_the_plain_pixels(ctx, files, odd):
    given, plain, kwargs = odd[1](files)
    # the plain form goes through the processor's own defaults (rescale on): the odd form must land on it exactly
    assert torch.equal(ctx.pixels(given, **kwargs), ctx.pixels(plain))


def test_transparent_png_file_composites_onto_white(ctx, files):
    # the transparent part of the file is white, as for the opened image; PIL's plain RGB conversion makes it red
    opened = Image.open(files / "rgba.png")
    white = Image.new("RGB", opened.size, (255, 255, 255))
    white.paste(opened, mask=opened.getchannel("A"))
    assert torch.equal(ctx.pixels(str(files / "rgba.png")), ctx.pixels(white))
    assert not torch.equal(ctx.pixels(str(files / "rgba.png")), ctx.pixels(opened.convert("RGB")))


# ----- processor: images and texts --------------------------------------------------------------------------------
PROCESSOR_ERRORS: list[tuple[str, Callable[[Context], Any], type, str]] = [
    ("more-images-than-the-text-takes",
     lambda c: c.processor(images=[c.images[0], c.images[1]], text=[c.texts[0]], return_tensors="pt"),
     ValueError, r"number of images.*\b2\b"),
    ("images-moved-between-samples",
     lambda c: c.processor(images=[[c.images[0], c.images[1]], []], text=c.texts, return_tensors="pt", padding=True),
     ValueError, r"sample 0 has 2 image\(s\) in its list but its text needs 1"),
    ("second-sample-short-of-images",
     lambda c: c.processor(images=[[c.images[0]], []], text=c.texts, return_tensors="pt", padding=True),
     ValueError, r"sample 1 has 0 image\(s\) in its list but its text needs 1"),
    ("more-image-lists-than-texts",
     lambda c: c.processor(images=[[c.images[0]], [c.images[1]], []], text=c.texts, return_tensors="pt", padding=True),
     ValueError, r"per sample \(3 lists\) but there are 2 texts"),
    ("unreachable-url-in-a-batch",
     lambda c: c.processor(images=[c.images[0], UNREACHABLE_URL], text=c.texts, return_tensors="pt", padding=True),
     ConnectionError, r"http://127\.0\.0\.1:9/x\.png"),
]


@pytest.mark.parametrize("hostile", PROCESSOR_ERRORS, ids=_hostile_ids(PROCESSOR_ERRORS))
def test_processor_refuses_mismatched_images(ctx, hostile):
    _, call, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        call(ctx)


def test_per_sample_image_lists_equal_the_flat_list(ctx, files):
    nested = ctx.processor(images=[[ctx.images[0]], [ctx.images[1]]], text=ctx.texts, return_tensors="pt", padding=True)
    for key, value in ctx.batch.items():
        assert torch.equal(nested[key], value), key
    # a path in the batch is the opened file, exactly
    from_path = ctx.processor(images=[ctx.images[0], str(files / "photo.png")], text=ctx.texts, return_tensors="pt",
                              padding=True)
    opened = ctx.processor(images=[ctx.images[0], Image.open(files / "photo.png")], text=ctx.texts,
                           return_tensors="pt", padding=True)
    assert torch.equal(from_path["pixel_values"], opened["pixel_values"])


# ----- model forward ---------------------------------------------------------------------------------------------
def _ids_with(c: Context, value: int) -> torch.Tensor:
    ids = c.batch["input_ids"].clone()
    ids[0, -1] = value
    return ids


def _decoder_ids(c: Context) -> dict:
    """An encoder-decoder model's decoder inputs (the prompt's ids serve); nothing for a decoder-only model."""
    return {"decoder_input_ids": c.batch["input_ids"]} if c.model.config.is_encoder_decoder else {}


MODEL_ERRORS: list[tuple[str, Callable[[Context], Any], type, str]] = [
    ("pixel-values-as-list", lambda c: c.model(**c.with_batch(pixel_values=list(c.batch["pixel_values"]))),
     TypeError, "pixel_values must be one torch.Tensor, got a list"),
    ("pixel-values-uint8", lambda c: c.model(**c.with_batch(pixel_values=c.batch["pixel_values"].to(torch.uint8))),
     TypeError, r"pixel_values must be floating point .* got dtype torch\.uint8"),
    ("pixel-values-int64", lambda c: c.model(**c.with_batch(pixel_values=c.batch["pixel_values"].long())),
     TypeError, r"got dtype torch\.int64"),
    ("pixel-values-numpy", lambda c: c.model(**c.with_batch(pixel_values=c.batch["pixel_values"].numpy())),
     TypeError, "pixel_values must be a torch.Tensor"),
    ("id-beyond-vocabulary", lambda c: c.model(**c.with_batch(input_ids=_ids_with(c, c.model.config.text_config.vocab_size))),
     ValueError, r"outside the vocabulary \[0, \d+\)"),
    ("original-llava-image-index", lambda c: c.model(**c.with_batch(input_ids=_ids_with(c, -200))),
     ValueError, r"outside the vocabulary \[0, \d+\): values from -200"),
    ("negative-id", lambda c: c.model(**c.with_batch(input_ids=_ids_with(c, -1))),
     ValueError, "values from -1"),
    ("ids-without-batch-dim", lambda c: c.model(**c.with_batch(input_ids=c.batch["input_ids"][0])),
     ValueError, r"input_ids must be \(batch, sequence\)"),
    ("float-ids", lambda c: c.model(**c.with_batch(input_ids=c.batch["input_ids"].float())),
     TypeError, "input_ids must hold integer token ids"),
    ("ids-as-list", lambda c: c.model(**c.with_batch(input_ids=c.batch["input_ids"].tolist())),
     TypeError, "input_ids must be a torch.Tensor"),
    # (an encoder-decoder's labels follow its decoder_input_ids, here given one token longer)
    ("labels-one-short", lambda c: c.model(**c.batch, labels=c.batch["input_ids"][:, :-1], **_decoder_ids(c)),
     ValueError, r"labels have shape \(2, \d+\) but the (inputs|decoder_input_ids) are"),
    ("labels-float", lambda c: c.model(**c.batch, labels=c.batch["input_ids"].float()),
     TypeError, "labels must hold integer token ids"),
    # (the prompt's ids serve as labels; for an encoder-decoder they are aligned with the same ids as decoder inputs)
    ("labels-beyond-vocabulary",
     lambda c: c.model(**c.batch, labels=_ids_with(c, c.model.config.text_config.vocab_size), **_decoder_ids(c)),
     ValueError, r"labels hold ids from \d+ to \d+, outside the vocabulary \[0, \d+\)"),
    ("labels-negative-other-than-ignore", lambda c: c.model(**c.batch, labels=_ids_with(c, -5), **_decoder_ids(c)),
     ValueError, r"labels hold ids from -5 to \d+, .*only -100"),
    ("ids-uint8", lambda c: c.model(**c.with_batch(input_ids=c.batch["input_ids"].to(torch.uint8))),
     TypeError, r"input_ids must be int64 \(or int32\) token ids, got dtype torch\.uint8"),
    ("ids-int16", lambda c: c.model(**c.with_batch(input_ids=c.batch["input_ids"].to(torch.int16))),
     TypeError, r"got dtype torch\.int16, .*convert with input_ids\.long\(\)"),
    ("mask-one-short", lambda c: c.model(**c.with_batch(attention_mask=c.batch["attention_mask"][:, :-1])),
     ValueError, r"attention_mask has shape \(2, \d+\) but the inputs are 2 sequences"),
    ("mask-too-long", lambda c: c.model(**c.with_batch(attention_mask=torch.nn.functional.pad(c.batch["attention_mask"], (3, 0), value=1))),
     ValueError, "one entry per token"),
    ("mask-of-one-row", lambda c: c.model(**c.with_batch(attention_mask=c.batch["attention_mask"][:1])),
     ValueError, r"attention_mask has shape \(1, \d+\)"),
    ("empty-batch", lambda c: c.model(input_ids=c.batch["input_ids"][:0], attention_mask=c.batch["attention_mask"][:0]),
     ValueError, r"empty batch: input_ids has shape \(0, \d+\)"),
    ("zero-length-sequences", lambda c: c.model(input_ids=c.batch["input_ids"][:, :0]),
     ValueError, r"empty batch: input_ids has shape \(2, 0\)"),
    ("embeds-of-wrong-width", lambda c: c.model(inputs_embeds=torch.zeros(2, 5, c.model.config.text_config.hidden_size + 1)),
     ValueError, r"inputs_embeds must be \(batch, sequence, \d+\)"),
    ("ids-and-embeds", lambda c: c.model(input_ids=c.batch["input_ids"], inputs_embeds=torch.zeros(2, 5, 8)),
     ValueError, "exactly one of input_ids or inputs_embeds"),
]


@pytest.mark.parametrize("hostile", MODEL_ERRORS, ids=_hostile_ids(MODEL_ERRORS))
def test_model_refuses_what_it_cannot_compute(ctx, hostile):
    _, call, error, fragment = hostile
    with torch.no_grad(), pytest.raises(error, match=fragment):
        call(ctx)


ENCODER_DECODER_CASES = [case for case in TINY_CASES if presets.get_config(*case).is_encoder_decoder]


def _decoder_batch(c: Context, **changes) -> dict:
    rows = c.batch["input_ids"].shape[0]
    decoder = {"decoder_input_ids": torch.arange(5, 11).repeat(rows, 1)}
    return {**c.batch, **decoder, **changes}


DECODER_ERRORS: list[tuple[str, Callable[[Context], Any], type, str]] = [
    ("decoder-ids-float", lambda c: c.model(**_decoder_batch(c, decoder_input_ids=torch.ones(2, 6))),
     TypeError, "decoder_input_ids must hold integer token ids"),
    ("decoder-ids-without-batch-dim", lambda c: c.model(**_decoder_batch(c, decoder_input_ids=torch.arange(5, 11))),
     ValueError, r"decoder_input_ids must be \(batch, sequence\)"),
    ("decoder-id-beyond-vocabulary", lambda c: c.model(**_decoder_batch(c, decoder_input_ids=torch.full((2, 3), 10**6))),
     ValueError, r"decoder_input_ids hold token ids outside the vocabulary"),
    ("decoder-mask-one-short", lambda c: c.model(**_decoder_batch(c, decoder_attention_mask=torch.ones(2, 5, dtype=torch.long))),
     ValueError, r"decoder_attention_mask has shape \(2, 5\) but the inputs are 2 sequences of 6 tokens"),
    ("decoder-embeds-of-wrong-width", lambda c: c.model(**{**c.batch, "decoder_inputs_embeds": torch.zeros(2, 4, 7)}),
     ValueError, r"decoder_inputs_embeds must be \(batch, sequence, \d+\)"),
    ("one-decoder-row-for-two-prompts", lambda c: c.model(**_decoder_batch(c, decoder_input_ids=torch.arange(5, 11)[None])),
     ValueError, "the decoder inputs hold 1 sequences but the encoder 2 prompts"),
    ("labels-3d", lambda c: c.model(**c.batch, labels=torch.arange(5, 11)[None, None].repeat(1, 2, 1)),
     ValueError, r"labels must be \(batch, target length\)"),
    ("position-ids", lambda c: c.model(**c.batch, position_ids=torch.arange(c.batch["input_ids"].shape[1])[None]),
     ValueError, "position_ids are not an input of an encoder-decoder language model"),
]


@pytest.mark.parametrize("case", ENCODER_DECODER_CASES, ids=case_id)
@pytest.mark.parametrize("hostile", DECODER_ERRORS, ids=_hostile_ids(DECODER_ERRORS))
def test_encoder_decoder_refuses_bad_decoder_inputs(case, hostile):
    _, call, error, fragment = hostile
    with torch.no_grad(), pytest.raises(error, match=fragment):
        call(_context(case))


@pytest.mark.parametrize("case", [case for case in TINY_CASES if case not in ENCODER_DECODER_CASES][:1], ids=case_id)
def test_a_decoder_only_model_refuses_decoder_inputs(case):
    c = _context(case)
    with torch.no_grad(), pytest.raises(ValueError, match=r"are inputs of an encoder-decoder language model"):
        c.model(**_decoder_batch(c))


IMAGE_SIZES_ERRORS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], str]] = [
    ("zero", lambda sizes: torch.zeros_like(sizes), r"image_sizes must be positive .* got \[\[0, 0\], \[0, 0\]\]"),
    ("negative", lambda sizes: -sizes, r"image_sizes must be positive \(height, width\) pairs, got \[\[-"),
    ("one-column", lambda sizes: sizes[:, :1], r"image_sizes must be .* shape \(2, 2\) .* got torch\.int64 of shape \(2, 1\)"),
    ("one-row-for-two-images", lambda sizes: sizes[:1], r"image_sizes must be .* got torch\.int64 of shape \(1, 2\)"),
    ("floats", lambda sizes: sizes.float(), r"image_sizes must be integer .* got torch\.float32"),
]


@pytest.mark.parametrize("case", _family_declares("image_sizes"), ids=case_id)
@pytest.mark.parametrize("hostile", IMAGE_SIZES_ERRORS, ids=_hostile_ids(IMAGE_SIZES_ERRORS))
def test_bad_image_sizes_are_refused(case, hostile):
    c = _context(case)
    _, corrupt, fragment = hostile
    sizes = c.batch.get("image_sizes", torch.tensor([list(image.size[::-1]) for image in c.images]))
    with torch.no_grad(), pytest.raises(ValueError, match=fragment):
        c.model(**c.with_batch(image_sizes=corrupt(sizes)))


def _with_qformer_ids(c: Context, value: int) -> torch.Tensor:
    ids = c.batch["qformer_input_ids"].clone()
    ids[0, 0] = value
    return ids


QFORMER_INSTRUCTION_ERRORS = [
    ("id-beyond-qformer-vocabulary",
     lambda c: {"qformer_input_ids": _with_qformer_ids(c, c.model.config.qformer_config.vocab_size)}, ValueError,
     r"qformer_input_ids hold token ids outside the vocabulary \[0, \d+\)"),
    ("negative-qformer-id", lambda c: {"qformer_input_ids": _with_qformer_ids(c, -3)}, ValueError, "values from -3"),
    ("qformer-ids-float", lambda c: {"qformer_input_ids": c.batch["qformer_input_ids"].float()}, TypeError,
     "qformer_input_ids must hold integer token ids"),
    ("qformer-mask-one-short", lambda c: {"qformer_attention_mask": c.batch["qformer_attention_mask"][:, 1:]},
     ValueError, r"qformer_attention_mask has shape \(2, \d+\) but qformer_input_ids \(2, \d+\): one entry"),
    ("instruction-beyond-qformer-positions", lambda c: {
        "qformer_input_ids": torch.ones(2, c.model.config.qformer_config.max_position_embeddings + 1, dtype=torch.long),
        "qformer_attention_mask": None,
    }, ValueError, r"the instruction has \d+ Q-Former tokens, more than the Q-Former's \d+ positions"),
]


@pytest.mark.parametrize("case", _family_declares("qformer_input_ids"), ids=case_id)
@pytest.mark.parametrize("hostile", QFORMER_INSTRUCTION_ERRORS, ids=_hostile_ids(QFORMER_INSTRUCTION_ERRORS))
def test_bad_qformer_instructions_are_refused(case, hostile):
    c = _context(case)
    _, changes, error, fragment = hostile
    inputs = {key: value for key, value in c.with_batch(**changes(c)).items() if value is not None}
    with torch.no_grad(), pytest.raises(error, match=fragment):
        c.model(**inputs)


@pytest.mark.parametrize("case", _family_declares("vision_feature_layer"), ids=case_id)
def test_per_call_feature_layer_beyond_the_tower_is_refused(case):
    c = _context(case)
    depth = c.model.config.vision_config.num_hidden_layers
    for layer in (depth + 1, -(depth + 2)):
        with torch.no_grad(), pytest.raises(ValueError, match=rf"index {layer} is outside the vision tower's {depth + 1}"):
            c.model(**c.batch, vision_feature_layer=layer)


def test_an_id_another_code_base_uses_is_explained_by_the_family_that_declares_it(ctx):
    """A family's ``token_hints`` (LLaVA: the original code's -200 image index) reach the vocabulary error, in the
    forward and in generate(); a family without hints gives the generic fix."""
    hints = type(ctx.model.model).token_hints
    for token in (*hints, -7):
        hint = hints.get(token, "Use the model's own tokenizer").format(image_token_id=ctx.model.config.image_token_id)
        with torch.no_grad(), pytest.raises(ValueError, match=re.escape(hint)):
            ctx.model(**ctx.with_batch(input_ids=_ids_with(ctx, token)))
        with pytest.raises(ValueError, match=re.escape(hint)):
            ctx.model.generate(**ctx.with_batch(input_ids=_ids_with(ctx, token)), max_new_tokens=1)


def test_the_llava_family_explains_the_original_image_index():
    assert "-200 is the original LLaVA code's IMAGE_TOKEN_INDEX" in vlmzoo.ZooLlavaModel.token_hints[-200]


def _a_tower_config(config):
    """One of the config's vision towers: the primary, else the high-resolution branch, else the first expert."""
    return config.vision_config or config.aux_vision_config or next(iter(config.vision_configs.values()))


# ----- generate ------------------------------------------------------------------------------------------------
GENERATE_ERRORS: list[tuple[str, Callable[[Context], dict], type, str]] = [
    ("pixel-values-as-list", lambda c: c.with_batch(pixel_values=list(c.batch["pixel_values"])), TypeError, "got a list"),
    ("id-beyond-vocabulary", lambda c: c.with_batch(input_ids=_ids_with(c, 10**6)), ValueError, "outside the vocabulary"),
    ("original-llava-image-index", lambda c: c.with_batch(input_ids=_ids_with(c, -200)), ValueError, "values from -200"),
    ("mask-one-short", lambda c: c.with_batch(attention_mask=c.batch["attention_mask"][:, 1:]), ValueError,
     "one entry per token"),
]


@pytest.mark.parametrize("hostile", GENERATE_ERRORS, ids=_hostile_ids(GENERATE_ERRORS))
def test_generate_refuses_bad_inputs(ctx, hostile):
    _, inputs, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        ctx.model.generate(**inputs(ctx), max_new_tokens=2, do_sample=False)


def test_generate_decodes_without_checking_each_step_against_the_host(ctx, monkeypatch):
    """The vocabulary check runs at prefill only: decode steps (one model-made token, with a cache) skip it."""
    from vlmzoo.modeling import input_checks

    calls = []
    original = input_checks._check_ids_in_vocabulary
    def record(ids, vocab_size, image_token_id, name, *rest):
        calls.append((name, ids.shape))
        return original(ids, vocab_size, image_token_id, name, *rest)

    monkeypatch.setattr(input_checks, "_check_ids_in_vocabulary", record)
    ctx.model.generate(**ctx.batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    # the prompt once (a Q-Former's instruction is checked once too, with the images, at prefill)
    assert [shape for name, shape in calls if name == "input_ids"] == [ctx.batch["input_ids"].shape]
    assert all(name in ("input_ids", "qformer_input_ids") for name, _ in calls) and len(calls) <= 2


# ----- config ------------------------------------------------------------------------------------------------
CONFIG_ERRORS: list[tuple[str, Callable[[Any], dict], type, str]] = [
    ("image-token-beyond-vocabulary", lambda config: {"image_token_id": config.text_config.vocab_size}, ValueError,
     r"image_token_id=\d+ is outside the text vocabulary"),
    ("negative-image-token", lambda config: {"image_token_id": -1}, ValueError, r"image_token_id=-1 is outside"),
    ("text-config-as-vision-config", lambda config: {"vision_config": config.text_config}, ValueError,
     r"vision_config is a '\w+' config, which does not describe a vision model"),
    ("vision-config-as-text-config", lambda config: {"text_config": _a_tower_config(config)}, ValueError,
     r"text_config is a '\w+' config without a vocab_size"),
    ("stage-with-unknown-component", lambda config: {"training_stages": {"align": ["projektor"]}}, ValueError,
     r"names unknown components \['projektor'\]"),
]


@pytest.mark.parametrize("hostile", CONFIG_ERRORS, ids=_hostile_ids(CONFIG_ERRORS))
def test_config_refuses_what_no_model_can_compute(case, hostile):
    _, overrides, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        presets.get_config(*case, **overrides(presets.get_config(*case)))


FEATURE_LAYER_ERRORS: list[tuple[str, Callable[[int], Any], type, str]] = [
    ("beyond-depth", lambda depth: depth + 1, ValueError, r"index {bad} is outside the vision tower's {states} hidden states"),
    ("negative-beyond-depth", lambda depth: -(depth + 2), ValueError, r"use an index in \[-{states}, {last}\]"),
    ("list-with-one-bad", lambda depth: [-2, depth + 5], ValueError, r"index {bad5} is outside"),
    ("empty-list", lambda depth: [], TypeError, "must be an int or a non-empty list of ints"),
    ("unknown-strategy", None, ValueError, "unknown vision_feature_select_strategy 'cls_only'; valid strategies: default, full"),
]


@pytest.mark.parametrize("case", _family_declares("vision_feature_layer"), ids=case_id)
@pytest.mark.parametrize("hostile", FEATURE_LAYER_ERRORS, ids=_hostile_ids(FEATURE_LAYER_ERRORS))
def test_config_refuses_feature_selection_the_tower_cannot_give(case, hostile):
    _, layer, error, fragment = hostile
    depth = presets.get_config(*case).vision_config.num_hidden_layers
    if layer is None:
        overrides = {"vision_feature_select_strategy": "cls_only"}
    else:
        overrides = {"vision_feature_layer": layer(depth)}
    pattern = fragment.format(bad=depth + 1, bad5=depth + 5, states=depth + 1, last=depth)
    with pytest.raises(error, match=pattern):
        presets.get_config(*case, **overrides)


# ----- save / load ------------------------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def _saved(ctx: Context, directory: Path) -> dict[str, torch.Tensor]:
    ctx.model.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def test_a_missing_weight_is_reported_by_name_at_the_default_level(ctx, tmp_path):
    from transformers.utils import logging as hf_logging

    weights = _saved(ctx, tmp_path)
    missing = next(key for key in weights if ".multi_modal_projector." in key)
    save_file({k: v for k, v in weights.items() if k != missing}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    handler = _Records()
    library_root = logging.getLogger("transformers")
    library_root.addHandler(handler)
    try:
        assert hf_logging.get_verbosity() <= logging.WARNING  # the default level shows warnings
        AutoModelForImageTextToText.from_pretrained(tmp_path)
    finally:
        library_root.removeHandler(handler)
    reports = [r for r in handler.records if missing in r.getMessage()]
    assert reports and all(r.levelno == logging.WARNING for r in reports)
    assert "MISSING" in reports[0].getMessage()


SAVED_ERRORS: list[tuple[str, Callable[[Context, Path], Any], type, str]] = [
    ("config-image-token-beyond-vocabulary", lambda c, d: _edit_config(d, image_token_id=10**6) or AutoConfig.from_pretrained(d),
     ValueError, r"image_token_id=1000000 is outside the text vocabulary"),
    ("config-vision-model-type-of-a-text-model", lambda c, d: _edit_config(d, vision_config=c.model.config.text_config.to_dict())
     or AutoConfig.from_pretrained(d), ValueError, r"does not describe a vision model|vision_config is always a '\w+'"),
    ("weight-of-wrong-shape", lambda c, d: _resize_a_projector_weight(d) or AutoModelForImageTextToText.from_pretrained(d),
     RuntimeError, "ignore_mismatched_sizes"),
]


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _resize_a_projector_weight(directory: Path) -> None:
    weights = load_file(directory / "model.safetensors")
    key = next(key for key in weights if ".multi_modal_projector." in key and key.endswith("weight"))
    weights[key] = torch.zeros(weights[key].shape[0] + 1, *weights[key].shape[1:])
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("hostile", SAVED_ERRORS, ids=_hostile_ids(SAVED_ERRORS))
def test_loading_a_broken_checkpoint_says_why(ctx, tmp_path, hostile):
    _, load, error, fragment = hostile
    _saved(ctx, tmp_path)
    with pytest.raises(error, match=fragment):
        load(ctx, tmp_path)


# ----- collator ------------------------------------------------------------------------------------------------
def _example(image=None, answer: str | None = "It is red.", **image_part) -> dict:
    part = {"type": "image", **({"image": image} if image is not None else image_part)}
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "What color is it?"}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return {"messages": messages}


COLLATOR_ERRORS: list[tuple[str, Callable[[], list], dict, type, str]] = [
    ("no-examples", lambda: [], {}, ValueError, "cannot collate an empty batch"),
    ("example-without-messages", lambda: [{"text": "hi"}], {}, ValueError, r"examples \[0\] have no"),
    ("example-not-a-dict", lambda: ["USER: hi"], {}, TypeError, r"examples \[0\] are not dicts"),
    ("messages-not-a-list", lambda: [{"messages": "hi"}], {}, TypeError, "example 0: a conversation must be a list of chat turns"),
    ("turn-without-role", lambda: [{"messages": [{"content": "hi"}]}], {}, TypeError, r"example 0, turn 0: a chat turn"),
    ("content-not-text-or-parts", lambda: [{"messages": [{"role": "user", "content": 5}]}], {}, TypeError,
     "'content' must be a string or a list of parts"),
    ("image-part-without-image", lambda: [_example(make_image(40, 30)), _example(foo=1)], {}, ValueError,
     r"example 1, turn 0, part 0: an image part holds no image"),
    ("role-typo", lambda: [{"messages": [*_example(make_image(40, 30))["messages"][:1], {"role": "assistent", "content": "red"}]}],
     {}, ValueError, r"example 0, turn 1: unknown role 'assistent' \(did you mean 'assistant'\?\)"),
    ("content-a-dict", lambda: [{"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}]}], {}, TypeError,
     r"example 0, turn 0: 'content' must be a string or a list of parts, got one dict"),
    ("part-keyed-content", lambda: [{"messages": [{"role": "user", "content": [{"type": "text", "content": "hi"}]}]}], {},
     TypeError, r"example 0, turn 0, part 0 is a text part without 'text'"),
    ("no-assistant-reply", lambda: [_example(make_image(40, 30), answer=None)], {}, ValueError, "no assistant reply"),
    ("max-length-cuts-image-tokens", lambda: [_example(make_image(40, 30))], {"max_length": 4}, ValueError,
     "more than max_length=4"),
    ("unreachable-image-url", lambda: [_example(url=UNREACHABLE_URL)], {}, ConnectionError, r"http://127\.0\.0\.1:9/x\.png"),
]


@pytest.mark.parametrize("hostile", COLLATOR_ERRORS, ids=_hostile_ids(COLLATOR_ERRORS))
def test_collator_refuses_malformed_examples(ctx, hostile):
    _, examples, options, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        VLMDataCollator(ctx.processor, **options)(examples())


def test_collator_reads_image_paths_like_opened_images(ctx, files):
    collate = VLMDataCollator(ctx.processor)
    from_path = collate([_example(path=str(files / "rgba.png"))])
    opened = collate([_example(Image.open(files / "rgba.png"))])
    assert from_path.keys() == opened.keys()
    for key in opened:
        assert torch.equal(from_path[key], opened[key]), key


def test_a_prompt_beyond_learned_positions_is_refused_and_rotary_ones_run(ctx):
    """A language model with a learned position table refuses a prompt that reaches past it, naming both numbers
    (it failed inside torch); one with rotary / relative positions runs such a prompt to finite logits."""
    model = ctx.model
    text_config = model.config.get_text_config()
    length = (model.model.position_limit or getattr(text_config, "max_position_embeddings", 512)) + 1
    ids = torch.full((1, length), ctx.processor.tokenizer.pad_token_id + 0)
    ids[0, :5] = torch.arange(5, 10)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.tensor([[text_config.decoder_start_token_id]])
    with torch.no_grad():
        if model.model.position_limit is not None:
            with pytest.raises(ValueError, match=rf"has {length - 1} learned positions, but this call reaches position {length}"):
                model(**inputs)
        else:
            assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("case", [case for case in TINY_CASES if case not in ENCODER_DECODER_CASES], ids=case_id)
def test_pixels_with_a_cache_from_another_prompt_name_the_cache_not_the_processor(case):
    """Pixels given on a later step (a cache holding another prompt, new tokens without placeholders): the error says
    the cache holds tokens and what to do, instead of blaming the processor's image-token count. (An
    encoder-decoder's cache is its decoder's; its prompt and pixels go to the encoder.)"""
    c = _context(case)
    model, batch = c.model, c.batch
    with torch.no_grad():
        stale = model(**batch, use_cache=True).cache
        step = {**batch, "input_ids": batch["input_ids"][:, -1:],
                "attention_mask": torch.ones(2, batch["input_ids"].shape[1] + 1, dtype=torch.long)}
        with pytest.raises(ValueError, match=r"The cache already holds \d+ tokens: images go with the call whose new"):
            model(**step, cache=stale)


def test_a_checkpoint_opened_with_another_familys_class_names_its_family(ctx, tmp_path):
    """A checkpoint of one family opened with another family's class: one error naming the checkpoint's model_type
    and the Auto class that loads it (it used to fail on a training stage the other family lacks)."""
    ctx.model.save_pretrained(tmp_path)
    own = ctx.model.config.model_type
    for family in vlmzoo.FAMILIES:
        entry = vlmzoo.get_family(family)
        if entry.config_class.model_type == own:
            continue
        with pytest.raises(ValueError, match=rf"this checkpoint is a '{own}' model, not a '{entry.config_class.model_type}'"):
            entry.for_generation_class.from_pretrained(tmp_path)
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)) is type(ctx.model)
