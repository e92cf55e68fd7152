"""Conversion of LLaVA checkpoints (transformers' layout and the original repository's) into vlmzoo's ZooLlava.

Every conversion is checked against the model it came from: tiny random transformers
``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` references (and, for LLaVA 1.0's
linear projector, which transformers does not implement, a reference assembled here from transformers'
CLIP tower and Llama). The converted directory is loaded with the Auto classes; inputs from its processor
must equal transformers' processor's, logits agree to 1e-5 on a left-padded batch, greedy generation is
identical, and the printed summary accounts for every tensor.

Conversions never lose data (DESIGN.md §6): every user error (corrupt or unreadable input, an output that must
not or cannot be written, a config that cannot work, a shape mismatch) exits 2 with one line naming the file and
the cause, and a snapshot of the output's parent (names, sizes, mtimes, content hashes) shows that nothing
changed; a bug keeps its traceback.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmzoo import ZooLlavaForConditionalGeneration, ZooLlavaProcessor
from vlmzoo.cli import main as cli_main
from vlmzoo.conversion_scripts import convert_llava
from vlmzoo.presets import build_tiny_tokenizer

from _reference_llava import (
    PINPOINTS,
    PROMPTS,
    add_tensors_to_checkpoint,
    build_reference,
    original_config,
    original_state_dict,
    random_image,
    reference_processor,
    resave_as_bin_shards,
    save_hf_input,
    snapshot,
    tiny_clip_config,
    tiny_siglip_config,
    tiny_text_config,
    tokenizer_without_image_token,
    write_encoder,
    write_original_checkpoint,
)

SUMMARY = re.compile(r"^converted (\d+) tensors, (\d+) unused, (\d+) missing$", re.MULTILINE)
# images of different sizes and aspect ratios, so AnyRes picks different grids and un-pads differently
IMAGES = [(40, 90, 0), (100, 36, 1)]


def convert(capsys, *argv: str) -> tuple[int, tuple[int, int, int] | None, str]:
    """Run the script's main(); return its exit code, the (converted, unused, missing) summary and stdout."""
    code = convert_llava.main([str(arg) for arg in argv])
    out = capsys.readouterr().out
    match = SUMMARY.search(out)
    return code, tuple(int(n) for n in match.groups()) if match else None, out


PROG = "vlmzoo convert llava"


def expect_user_error(capsys, parent: Path, argv, *fragments: str, entry: str = "script") -> str:
    """Run through the script (or ``vlmzoo convert llava``): exit 2, one error line holding ``fragments``, and
    nothing under ``parent`` (the directory holding --output) changed. Returns the line."""
    before = snapshot(parent)
    argv = [str(arg) for arg in argv]
    code = convert_llava.main(argv) if entry == "script" else cli_main(["convert", "llava", *argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(parent) == before
    return lines[0]


@pytest.fixture
def deny(monkeypatch):
    """``deny(path)`` takes away read permission (``write=True``: a directory's write permission) until the test
    ends. Root ignores permissions, so for root the kernel's EACCES is reproduced where the conversion meets it:
    opening that file, or creating an entry in that directory."""
    changed = []

    def take_away(path: Path, write: bool = False) -> None:
        changed.append((path, path.stat().st_mode))
        path.chmod(0o555 if write else 0)
        if os.geteuid() != 0:
            return
        if write:
            real_mkdir = os.mkdir

            def mkdir(target, *args, **kwargs):
                if Path(target).parent == path:
                    raise PermissionError(errno.EACCES, "Permission denied", str(target))
                return real_mkdir(target, *args, **kwargs)

            monkeypatch.setattr(os, "mkdir", mkdir)
        else:
            real_open = builtins.open

            def guarded_open(file, *args, **kwargs):
                if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                    raise PermissionError(errno.EACCES, "Permission denied", str(file))
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", guarded_open)

    yield take_away
    for path, mode in changed:
        path.chmod(mode)


def saved_tensor_count(directory: Path) -> int:
    count = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            count += len(list(handle.keys()))
    return count


def load_state(directory: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(directory.glob("*.safetensors")):
        state.update(load_file(path))
    return state


def load_converted(directory: Path):
    model, loading = AutoModelForImageTextToText.from_pretrained(directory, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    model.eval()
    processor = AutoProcessor.from_pretrained(directory)
    assert isinstance(model, ZooLlavaForConditionalGeneration)
    assert isinstance(processor, ZooLlavaProcessor)
    return model, processor


def assert_matches_reference(directory: Path, reference, reference_inputs_processor, reference_forward=None):
    """Same processor outputs, logits within 1e-5 on a left-padded batch, identical greedy generation."""
    model, processor = load_converted(directory)
    images = [random_image(h, w, seed) for h, w, seed in IMAGES]
    expected = reference_inputs_processor(images=images, text=PROMPTS, return_tensors="pt", padding=True)
    ours = processor(images=images, text=PROMPTS, return_tensors="pt", padding=True)
    assert set(ours) == set(expected)
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["attention_mask"], expected["attention_mask"])
    assert ours["attention_mask"][0, 0] == 0 and ours["attention_mask"][1].all()  # the shorter prompt is left-padded
    torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"], atol=1e-6, rtol=0)
    if "image_sizes" in expected:
        assert torch.equal(ours["image_sizes"], expected["image_sizes"])

    with torch.no_grad():
        reference_logits = (reference_forward or (lambda inputs: reference(**inputs).logits))(expected)
        logits = model(**ours).logits
    assert (logits - reference_logits).abs().max().item() <= 1e-5

    if reference_forward is None:  # generation needs a transformers reference model
        image_token_id = model.config.image_token_id
        settings = dict(max_new_tokens=8, do_sample=False, suppress_tokens=[image_token_id],
                        pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip
        generated = model.generate(**ours, **settings)
        reference_generated = reference.generate(**expected, **settings)
        assert generated.shape[1] > expected["input_ids"].shape[1]
        assert torch.equal(generated, reference_generated)
    return model, processor


# ----- --source hf ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def llava_input(tmp_path_factory, tokenizer):
    """A transformers LLaVA 1.5 directory (legacy on-disk layout, pad-to-square) and its reference."""
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    reference = build_reference("llava", tiny_clip_config(), tiny_text_config(tokenizer), image_token_id, seed=1)
    processor = reference_processor("llava", tokenizer, do_pad=True)
    directory = save_hf_input(reference, processor, tmp_path_factory.mktemp("hf_llava") / "input")
    return directory, reference, processor


@pytest.fixture(scope="module")
def llava_output(llava_input, tmp_path_factory):
    directory, _, _ = llava_input
    output = tmp_path_factory.mktemp("hf_llava_out") / "converted"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # through the `vlmzoo convert` dispatch
        code = cli_main(["convert", "llava", "--source", "hf", "--input", str(directory), "--output", str(output)])
    assert code == 0
    return output, printed.getvalue()


def test_hf_llava_legacy_layout_matches_reference(llava_input, llava_output):
    directory, reference, processor = llava_input
    output, printed = llava_output
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        saved_keys = list(handle.keys())
    # transformers 5 writes the legacy layout on disk
    assert any(key.startswith("language_model.model.") for key in saved_keys)
    assert "multi_modal_projector.linear_1.weight" in saved_keys
    summary = SUMMARY.search(printed)
    assert summary is not None and tuple(map(int, summary.groups())) == (len(saved_keys), 0, 0)

    model, converted_processor = assert_matches_reference(output, reference, processor)
    assert model.config.projector_type == "mlp2x_gelu" and not model.config.uses_anyres
    assert converted_processor.image_processor.pad_to_square  # transformers' do_pad
    assert converted_processor.chat_template == processor.chat_template


def test_hf_llava_next_memory_layout_sharded_in_and_out(tmp_path, tokenizer, capsys):
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    reference = build_reference("llava_next", tiny_clip_config(), tiny_text_config(tokenizer), image_token_id, seed=2)
    processor = reference_processor("llava_next", tokenizer)
    directory = save_hf_input(reference, processor, tmp_path / "input", legacy_layout=False, max_shard_size="60KB")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*.safetensors"))) > 1

    code, summary, _ = convert(capsys, "--source", "hf", "--input", directory, "--output", tmp_path / "out",
                               "--max-shard-size", "60KB")  # fmt: skip
    assert code == 0
    assert summary == (saved_tensor_count(directory), 0, 0)
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) > 1
    model, _ = assert_matches_reference(tmp_path / "out", reference, processor)
    assert model.config.image_grid_pinpoints == PINPOINTS
    torch.testing.assert_close(model.model.image_newline.weight, reference.model.image_newline, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_hf_siglip_qwen2_tied_full_strategy(kind, tmp_path, tokenizer, capsys):
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    reference = build_reference(
        kind, tiny_siglip_config(), tiny_text_config(tokenizer, "qwen2"), image_token_id,
        strategy="full", tie_word_embeddings=True, seed=3,
    )  # fmt: skip
    processor = reference_processor(kind, tokenizer, strategy="full", extra_tokens=0, tower="siglip")
    directory = save_hf_input(reference, processor, tmp_path / "input")
    code, summary, _ = convert(capsys, "--source", "hf", "--input", directory, "--output", tmp_path / "out")
    assert code == 0
    assert summary == (saved_tensor_count(directory), 0, 0)
    model, converted_processor = assert_matches_reference(tmp_path / "out", reference, processor)
    assert model.config.text_config.model_type == "qwen2"
    assert model.config.vision_feature_select_strategy == "full"
    assert converted_processor.num_additional_image_tokens == 0
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_bin_shards_convert_identically(llava_input, llava_output, tmp_path, capsys):
    directory, _, _ = llava_input
    bin_input = resave_as_bin_shards(directory, tmp_path / "bin_input", num_shards=3)
    assert not list(bin_input.glob("*.safetensors"))
    code, summary, _ = convert(capsys, "--source", "hf", "--input", bin_input, "--output", tmp_path / "out")
    assert code == 0 and summary[1:] == (0, 0)
    from_bin, from_safetensors = load_state(tmp_path / "out"), load_state(llava_output[0])
    assert from_bin.keys() == from_safetensors.keys()
    for name, tensor in from_safetensors.items():
        assert torch.equal(from_bin[name], tensor), name


def test_unknown_tensor_fails_unless_allowed(llava_input, tmp_path, capsys):
    directory, _, _ = llava_input
    corrupted = Path(shutil.copytree(directory, tmp_path / "input"))
    add_tensors_to_checkpoint(corrupted, extra={"language_model.model.extra_adapter.weight": torch.ones(3)})
    code, summary, out = convert(capsys, "--source", "hf", "--input", corrupted, "--output", tmp_path / "out")
    assert code != 0
    assert summary[1:] == (1, 0)
    assert "extra_adapter" in out
    assert not (tmp_path / "out").exists()  # nothing is written when the accounting fails

    code, summary, _ = convert(capsys, "--source", "hf", "--input", corrupted, "--output", tmp_path / "out",
                               "--allow-unused", r"extra_adapter\.")  # fmt: skip
    assert code == 0 and summary[1:] == (1, 0)
    load_converted(tmp_path / "out")


def test_missing_tensor_fails_even_with_allow_unused(llava_input, tmp_path, capsys):
    directory, _, _ = llava_input
    corrupted = Path(shutil.copytree(directory, tmp_path / "input"))
    add_tensors_to_checkpoint(corrupted, drop=("multi_modal_projector.linear_2.bias",))
    code, summary, out = convert(capsys, "--source", "hf", "--input", corrupted, "--output", tmp_path / "out",
                                 "--allow-unused", ".*")  # fmt: skip
    assert code != 0
    assert summary[1:] == (0, 1)
    assert "model.multi_modal_projector.linear_2.bias" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"projector_hidden_act": "silu"}, "projector_hidden_act 'silu' is not supported"),
        ({"vision_feature_layer": -5}, "vision_feature_layer -5 is beyond the vision tower's depth: it has 3 layers"),
    ],
)
def test_hf_config_that_cannot_work_is_refused(llava_input, tmp_path, capsys, overrides, message):
    directory, _, _ = llava_input
    changed = Path(shutil.copytree(directory, tmp_path / "input"))
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, **overrides}))
    expect_user_error(capsys, tmp_path, ["--source", "hf", "--input", changed, "--output", tmp_path / "out"],
                      f"'{changed / 'config.json'}'", message)  # fmt: skip


def test_existing_output_files_need_overwrite(llava_input, llava_output, tmp_path, capsys):
    directory, _, _ = llava_input
    output = Path(shutil.copytree(llava_output[0], tmp_path / "outs" / "out"))
    argv = ["--source", "hf", "--input", directory, "--output", output]
    expect_user_error(capsys, tmp_path / "outs", argv, f"--output '{output}' already holds ['config.json', "
                      "'model.safetensors']; pass --overwrite to replace them (nothing was changed)")  # fmt: skip
    before = snapshot(output)
    code, _, out = convert(capsys, *argv, "--overwrite")
    assert code == 0 and "note: --overwrite replaced ['chat_template.jinja', 'config.json'" in out
    after = snapshot(output)
    assert after.keys() == before.keys() and after["model.safetensors"][2] == before["model.safetensors"][2]
    assert after["model.safetensors"][1] != before["model.safetensors"][1]  # replaced by an identical conversion
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == ["out"]


# ----- --source original ----------------------------------------------------------------------------------
def original_reference(kind, text_tokenizer, vocab_rows: int, seed: int, **kwargs):
    """A reference whose vocabulary is ``vocab_rows`` + <image>; the <image> rows are the mean of the others,
    which is what the converter must give the row it adds for the token the original checkpoint lacks."""
    image_token_id = vocab_rows
    text_config = tiny_text_config(text_tokenizer, vocab_size=vocab_rows + 1)
    reference = build_reference(kind, tiny_clip_config(), text_config, image_token_id, seed=seed, **kwargs)
    with torch.no_grad():
        for weight in (reference.model.language_model.embed_tokens.weight, reference.lm_head.weight):
            weight[vocab_rows] = weight[:vocab_rows].mean(dim=0)
    return reference


def reference_tokenizer_with_image_token():
    tokenizer = tokenizer_without_image_token()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def test_original_pad_checkpoint_without_tower_adds_image_token(tmp_path, capsys):
    source_tokenizer = tokenizer_without_image_token()
    vocab = len(source_tokenizer)
    assert source_tokenizer.convert_tokens_to_ids("<image>") == source_tokenizer.unk_token_id
    reference = original_reference("llava", source_tokenizer, vocab, seed=4)
    checkpoint = write_original_checkpoint(
        tmp_path / "llava-v1.5", original_state_dict(reference, include_tower=False, vocab_rows=vocab),
        original_config(reference, {"image_aspect_ratio": "pad"}, vocab), source_tokenizer,
    )  # fmt: skip
    encoder = write_encoder(tmp_path / "clip", reference, with_weights=True)
    code, summary, out = convert(capsys, "--source", "original", "--input", checkpoint, "--encoder", encoder,
                                 "--output", tmp_path / "out")  # fmt: skip
    assert code == 0
    tower_tensors = len(reference.model.vision_tower.state_dict())
    assert summary == (len(original_state_dict(reference, False)) + tower_tensors, 0, 0)
    assert f"id {vocab}" in out and f"from {vocab} to {vocab + 1} rows" in out

    reference_tokenizer = reference_tokenizer_with_image_token()
    processor = reference_processor("llava", reference_tokenizer, do_pad=True)
    model, converted_processor = assert_matches_reference(tmp_path / "out", reference, processor)
    assert model.config.image_token_id == vocab and model.config.text_config.vocab_size == vocab + 1
    source_embeddings = original_state_dict(reference, False, vocab_rows=vocab)["model.embed_tokens.weight"]
    torch.testing.assert_close(model.get_input_embeddings().weight[vocab], source_embeddings.mean(dim=0))
    assert converted_processor.image_processor.pad_to_square
    # the original repository's conv_vicuna_v1 prompt: system, " USER: ... ASSISTANT: ...</s>USER: ... ASSISTANT:"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": "A red circle."},
        {"role": "user", "content": "Where?"},
    ]
    prompt = converted_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat is shown? ASSISTANT: "
        "A red circle.</s>USER: Where? ASSISTANT:"
    )


def test_original_anyres_checkpoint_with_tower(tmp_path, tokenizer, capsys):
    # LLaVA-NeXT trains the tower, so the checkpoint holds it; --encoder gives only the config. The original
    # lists pinpoints as (width, height): an asymmetric list shows they are read that way.
    pinpoints = [[32, 64], [64, 64], [96, 32]]  # [height, width]
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    reference = build_reference("llava_next", tiny_clip_config(), tiny_text_config(tokenizer), image_token_id,
                                pinpoints=pinpoints, seed=5)  # fmt: skip
    mm = {"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
          "image_grid_pinpoints": [[width, height] for height, width in pinpoints]}  # fmt: skip
    checkpoint = write_original_checkpoint(
        tmp_path / "llava-v1.6", original_state_dict(reference, include_tower=True),
        original_config(reference, mm, len(tokenizer)), tokenizer,
    )  # fmt: skip
    encoder = write_encoder(tmp_path / "clip", reference, with_weights=False)
    code, summary, out = convert(capsys, "--source", "original", "--input", checkpoint, "--output", tmp_path / "out",
                                 "--encoder", f"vision={encoder}")  # the named form of --encoder DIR  # fmt: skip
    assert code == 0
    assert summary == (len(original_state_dict(reference, True)), 0, 0)
    assert "grew" not in out
    processor = reference_processor("llava_next", tokenizer, pinpoints=pinpoints)
    model, _ = assert_matches_reference(tmp_path / "out", reference, processor)
    assert model.config.image_grid_pinpoints == pinpoints


def test_original_linear_projector_bin_shards_and_v4_encoder(tmp_path, tokenizer, capsys):
    """LLaVA 1.0: linear projector, CLS kept ('cls_patch'), no padding; .bin shards; transformers-4 CLIP layout."""
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    reference = build_reference("llava", tiny_clip_config(), tiny_text_config(tokenizer), image_token_id,
                                strategy="full", seed=6)  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    vision_width, text_width = reference.config.vision_config.hidden_size, reference.config.text_config.hidden_size
    projection = torch.randn(text_width, vision_width, generator=generator) * 0.3
    projection_bias = torch.randn(text_width, generator=generator) * 0.3
    state = {k: v for k, v in original_state_dict(reference, False).items() if not k.startswith("model.mm_projector")}
    state.update({"model.mm_projector.weight": projection, "model.mm_projector.bias": projection_bias})
    mm = {"mm_projector_type": "linear", "mm_vision_select_feature": "cls_patch", "image_aspect_ratio": "square"}
    write_original_checkpoint(tmp_path / "llava-v1", state, original_config(reference, mm, len(tokenizer)), tokenizer)
    checkpoint = resave_as_bin_shards(tmp_path / "llava-v1", tmp_path / "llava-v1-bin", num_shards=2)
    # a transformers-4 CLIP save: `vision_model.` level, plus the unused visual projection of a CLIPModel
    encoder = tmp_path / "clip-v4"
    encoder.mkdir()
    reference.config.vision_config.save_pretrained(encoder)
    tower = {f"vision_model.{k}": v.clone() for k, v in reference.model.vision_tower.state_dict().items()}
    tower["visual_projection.weight"] = torch.zeros(4, vision_width)
    save_file(tower, encoder / "model.safetensors")

    arguments = ["--source", "original", "--input", checkpoint, "--encoder", encoder, "--output", tmp_path / "out"]
    code, summary, out = convert(capsys, *arguments)
    assert code != 0 and summary[1:] == (1, 0) and "visual_projection.weight" in out
    code, summary, _ = convert(capsys, *arguments, "--allow-unused", r"^visual_projection\.")
    assert code == 0 and summary == (len(state) + len(tower) - 1, 1, 0)

    def llava_1_0_logits(inputs):  # CLIP hidden_states[-2] with CLS -> Linear -> placed at <image> -> Llama
        hidden = reference.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
        features = (hidden @ projection.T + projection_bias).reshape(-1, text_width)
        embeddings = reference.model.language_model.embed_tokens(inputs["input_ids"])
        embeddings[inputs["input_ids"] == image_token_id] = features
        outputs = reference.model.language_model(inputs_embeds=embeddings, attention_mask=inputs["attention_mask"])
        return reference.lm_head(outputs.last_hidden_state)

    processor = reference_processor("llava", tokenizer, strategy="full", do_pad=False)
    model, converted_processor = assert_matches_reference(tmp_path / "out", reference, processor, llava_1_0_logits)
    assert model.config.projector_type == "linear" and model.config.vision_feature_select_strategy == "full"
    assert not converted_processor.image_processor.pad_to_square


@pytest.fixture(scope="module")
def small_original_checkpoint(tmp_path_factory, tokenizer):
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    reference = build_reference("llava", tiny_clip_config(), tiny_text_config(tokenizer), image_token_id, seed=8)
    root = tmp_path_factory.mktemp("original_small")
    write_original_checkpoint(root / "ckpt", original_state_dict(reference, False),
                              original_config(reference, {}, len(tokenizer)), tokenizer)  # fmt: skip
    write_encoder(root / "clip", reference, with_weights=True)
    return root


@pytest.mark.parametrize("entry", ["script", "cli"])
def test_original_encoder_arguments_are_checked(small_original_checkpoint, tmp_path, capsys, entry):
    base = ["--source", "original", "--input", small_original_checkpoint / "ckpt", "--output", tmp_path / "out"]
    expect_user_error(capsys, tmp_path, base, "--source original needs --encoder [vision=]DIR", entry=entry)
    clip = small_original_checkpoint / "clip"
    expect_user_error(capsys, tmp_path, [*base, "--encoder", f"aux={clip}"], "unknown encoder name 'aux'; --source "
                      "original takes ['vision']", entry=entry)  # fmt: skip
    hf = ["--source", "hf", "--input", small_original_checkpoint / "ckpt", "--output", tmp_path / "out"]
    expect_user_error(capsys, tmp_path, [*hf, "--encoder", clip], "--encoder is not used with --source hf", entry=entry)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mm_projector_type": "mlp3x_gelu"}, "mm_projector_type 'mlp3x_gelu'"),
        ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio 'anyres_max_9'"),
        ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "flat"}, "mm_patch_merge_type 'flat'"),
        ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature 'cls'"),
        ({"mm_hidden_size": 1024}, "mm_hidden_size 1024"),
        ({"model_type": "llava_mpt"}, "model_type 'llava_mpt'"),
        ({"mm_vision_select_layer": -5}, "mm_vision_select_layer -5 is beyond the vision tower's depth: it has 3 "
                                         "layers, so hidden states -4 .. 3 exist"),  # fmt: skip
        ({"mm_vision_select_layer": 4}, "mm_vision_select_layer 4 is beyond the vision tower's depth"),
        ({"vocab_size": "many"}, "vocab_size must be a positive integer"),
    ],
)
def test_original_unsupported_config_is_refused(small_original_checkpoint, tmp_path, capsys, overrides, message):
    checkpoint = Path(shutil.copytree(small_original_checkpoint / "ckpt", tmp_path / "ckpt"))
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, **overrides}))
    argv = ["--source", "original", "--input", checkpoint, "--encoder", small_original_checkpoint / "clip",
            "--output", tmp_path / "out"]  # fmt: skip
    expect_user_error(capsys, tmp_path, argv, f"'{checkpoint / 'config.json'}'", message)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli_main(["convert", "llava", "--source", "hf", "--input", str(tmp_path / "absent"),
                     "--output", str(tmp_path / "out")]) == 2
    assert f"{PROG}: error: input directory '{tmp_path / 'absent'}' does not exist" in capsys.readouterr().err
    assert cli_main(["convert", "no-such-family"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmzoo: error: unknown family 'no-such-family'; valid keys: ") and "llava" in err
    assert cli_main(["convert"]) == 2
    assert "vlmzoo: error: name the family to convert" in capsys.readouterr().err
    assert cli_main(["no-such-command"]) == 2
    assert "vlmzoo: error: unknown command 'no-such-command'; valid keys: convert, demo" in capsys.readouterr().err
    assert cli_main(["convert", "llava", "--source", "hf", "--input", str(tmp_path)]) == 2
    assert "the following arguments are required: --output" in capsys.readouterr().err



# ----- conversions never lose data ------------------------------------------------------------------------
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _corrupt_index_entry(path: Path) -> None:
    index = json.loads(path.read_text())
    key, shard = next(iter(index["weight_map"].items()))
    other = next(name for name in sorted(set(index["weight_map"].values())) if name != shard)
    index["weight_map"][key] = other
    path.write_text(json.dumps(index))


# (layout of the input, file to damage, damage, expected message fragments after the file's path)
CORRUPT_INPUTS = {
    "truncated safetensors": ("single", "model.safetensors", _truncate, "is truncated or corrupt: "),
    "safetensors garbage": ("single", "model.safetensors", lambda p: p.write_bytes(b"not safetensors"),
                            "is truncated or corrupt: Error while deserializing header"),
    "truncated index": ("safetensors_shards", "model.safetensors.index.json", _truncate, "is not valid JSON"),
    "index names the wrong shard": ("safetensors_shards", "model.safetensors.index.json", _corrupt_index_entry,
                                    "is corrupt: it lists"),
    "truncated bin shard": ("bin_shards", "pytorch_model-00002-of-00003.bin", _truncate,
                            "is truncated or corrupt: PytorchStreamReader failed"),
    "truncated config": ("single", "config.json", _truncate, "is not valid JSON"),
}  # fmt: skip


@pytest.fixture
def output_with_earlier_conversion(llava_output, tmp_path) -> Path:
    """--output already holding a conversion: even with --overwrite, a failed run must leave it as it is."""
    return Path(shutil.copytree(llava_output[0], tmp_path / "outs" / "out"))


def _input_copy(directory: Path, layout: str, target: Path) -> Path:
    if layout == "single":
        return Path(shutil.copytree(directory, target))
    return resave_as_bin_shards(directory, target, num_shards=3, fmt="bin" if layout == "bin_shards" else "safetensors")


@pytest.mark.parametrize("case", list(CORRUPT_INPUTS))
def test_corrupt_input_is_named_and_output_untouched(case, llava_input, output_with_earlier_conversion, tmp_path,
                                                     capsys):  # fmt: skip
    layout, name, damage, cause = CORRUPT_INPUTS[case]
    directory = _input_copy(llava_input[0], layout, tmp_path / "input")
    damage(directory / name)
    argv = ["--source", "hf", "--input", directory, "--output", output_with_earlier_conversion, "--overwrite"]
    expect_user_error(capsys, tmp_path / "outs", argv, f"'{directory / name}' {cause}")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("entry", ["script", "cli"])
def test_unreadable_input_says_permission_denied(name, entry, llava_input, output_with_earlier_conversion, tmp_path,
                                                 capsys, deny):  # fmt: skip
    directory = Path(shutil.copytree(llava_input[0], tmp_path / "input"))
    deny(directory / name)
    argv = ["--source", "hf", "--input", directory, "--output", output_with_earlier_conversion, "--overwrite"]
    line = expect_user_error(capsys, tmp_path / "outs", argv, f"cannot read '{directory / name}': permission denied",
                             entry=entry)  # fmt: skip
    assert "no such file" not in line and "does not exist" not in line


def test_shape_mismatch_is_refused_before_writing(llava_input, output_with_earlier_conversion, tmp_path, capsys):
    directory = Path(shutil.copytree(llava_input[0], tmp_path / "input"))
    add_tensors_to_checkpoint(directory, extra={"multi_modal_projector.linear_2.bias": torch.zeros(7)})
    argv = ["--source", "hf", "--input", directory, "--output", output_with_earlier_conversion, "--overwrite"]
    expect_user_error(capsys, tmp_path / "outs", argv, f"'multi_modal_projector.linear_2.bias' in "
                      f"'{directory / 'model.safetensors'}' has shape (7,)", "'model.multi_modal_projector.linear_2.bias' "
                      "of the converted model needs (48,); does the config match the weights?")  # fmt: skip


def test_bad_shard_size_with_overwrite_keeps_the_old_weights(llava_input, output_with_earlier_conversion, tmp_path,
                                                             capsys):  # fmt: skip
    argv = ["--source", "hf", "--input", llava_input[0], "--output", output_with_earlier_conversion, "--overwrite",
            "--max-shard-size", "5XB"]  # fmt: skip
    expect_user_error(capsys, tmp_path / "outs", argv, "--max-shard-size '5XB' is not a size")


def _output_is_a_file(parent: Path, deny) -> Path:
    (parent / "out").write_text("my notes")
    return parent / "out"


def _output_holds_my_config(parent: Path, deny) -> Path:
    (parent / "out").mkdir()
    (parent / "out" / "config.json").write_text('{"mine": true}')
    return parent / "out"


def _output_holds_my_tokenizer(parent: Path, deny) -> Path:  # found only once the conversion is staged
    (parent / "out").mkdir()
    (parent / "out" / "tokenizer.json").write_text("{}")
    return parent / "out"


def _parent_not_writable(parent: Path, deny) -> Path:
    deny(parent, write=True)
    return parent / "out"


OUTPUT_REFUSALS = {
    "an existing regular file": (_output_is_a_file, "--output '{out}' is an existing file, not a directory"),
    "a user's config.json": (_output_holds_my_config, "--output '{out}' already holds ['config.json']; pass --overwrite"),
    "a user's tokenizer.json": (_output_holds_my_tokenizer, "--output '{out}' already holds ['tokenizer.json']"),
    "a parent that is not writable": (_parent_not_writable, "cannot write beside --output '{out}' (in '{parent}'): "
                                      "permission denied"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUTPUT_REFUSALS))
def test_output_that_must_not_or_cannot_be_written(case, llava_input, tmp_path, capsys, deny):
    parent = tmp_path / "outs"
    parent.mkdir()
    make, message = OUTPUT_REFUSALS[case]
    output = make(parent, deny)
    argv = ["--source", "hf", "--input", llava_input[0], "--output", output]
    expect_user_error(capsys, parent, argv, message.format(out=output, parent=parent))
    if case == "a user's tokenizer.json":  # with --overwrite the same run succeeds and replaces it
        code, _, out = convert(capsys, *argv, "--overwrite")
        assert code == 0 and "replaced ['tokenizer.json']" in out


def test_output_that_is_the_input_is_refused(llava_input, tmp_path, capsys):
    directory = Path(shutil.copytree(llava_input[0], tmp_path / "input"))
    expect_user_error(capsys, tmp_path, ["--source", "hf", "--input", directory, "--output", directory, "--overwrite"],
                      f"--output '{directory}' is an input directory")  # fmt: skip


def test_new_nested_output_is_created_only_on_success(llava_input, tmp_path, capsys):
    output = tmp_path / "outs" / "a" / "b"
    code, _, _ = convert(capsys, "--source", "hf", "--input", llava_input[0], "--output", output)
    assert code == 0 and (output / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (tmp_path / "plain").mkdir()
    assert (output.stat().st_mode & 0o777) == ((tmp_path / "plain").stat().st_mode & 0o777)  # not a private mode


@pytest.mark.parametrize("entry", ["script", "cli"])
def test_a_bug_keeps_its_traceback(llava_input, output_with_earlier_conversion, tmp_path, monkeypatch, entry):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the config translation")

    monkeypatch.setattr(convert_llava, "convert_hf_config", broken)
    argv = ["--source", "hf", "--input", str(llava_input[0]), "--output", str(output_with_earlier_conversion),
            "--overwrite"]  # fmt: skip
    before = snapshot(tmp_path / "outs")
    with pytest.raises(RuntimeError, match="a bug in the config translation"):
        convert_llava.main(argv) if entry == "script" else cli_main(["convert", "llava", *argv])
    assert snapshot(tmp_path / "outs") == before


def test_a_bug_while_staging_leaves_nothing_behind(llava_input, output_with_earlier_conversion, tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise TypeError("a bug while saving the processor")

    monkeypatch.setattr(ZooLlavaProcessor, "save_pretrained", broken_save)
    before = snapshot(tmp_path / "outs")
    with pytest.raises(TypeError, match="a bug while saving the processor"):
        cli_main(["convert", "llava", "--source", "hf", "--input", str(llava_input[0]), "--output",
                  str(output_with_earlier_conversion), "--overwrite"])  # fmt: skip
    assert snapshot(tmp_path / "outs") == before  # the staged weights were written, then removed
