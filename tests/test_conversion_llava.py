"""Conversion of LLaVA checkpoints (transformers' layout and the original repository's) into vlmzoo's ZooLlava.

Every conversion is checked against the model it came from: tiny random transformers
``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` references (and, for LLaVA 1.0's
linear projector, which transformers does not implement, a reference assembled here from transformers'
CLIP tower and Llama). The converted directory is loaded with the Auto classes; inputs from its processor
must equal transformers' processor's, logits agree to 1e-5 on a left-padded batch, greedy generation is
identical, and the printed summary accounts for every tensor.
"""

from __future__ import annotations

import contextlib
import io
import json
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


def test_projector_activation_other_than_gelu_is_refused(llava_input, tmp_path):
    directory, _, _ = llava_input
    changed = Path(shutil.copytree(directory, tmp_path / "input"))
    config = json.loads((changed / "config.json").read_text())
    config["projector_hidden_act"] = "silu"
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="projector_hidden_act 'silu'"):
        convert_llava.main(["--source", "hf", "--input", str(changed), "--output", str(tmp_path / "out")])


def test_existing_weights_in_output_need_overwrite(llava_input, llava_output, tmp_path, capsys):
    directory, _, _ = llava_input
    output = Path(shutil.copytree(llava_output[0], tmp_path / "out"))
    with pytest.raises(ValueError, match="--overwrite"):
        convert_llava.main(["--source", "hf", "--input", str(directory), "--output", str(output)])
    code, _, _ = convert(capsys, "--source", "hf", "--input", directory, "--output", output, "--overwrite")
    assert code == 0


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
    code, summary, out = convert(capsys, "--source", "original", "--input", checkpoint, "--encoder", encoder,
                                 "--output", tmp_path / "out")  # fmt: skip
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


def test_original_without_encoder_is_refused(small_original_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--encoder"):
        convert_llava.main(["--source", "original", "--input", str(small_original_checkpoint / "ckpt"),
                            "--output", str(tmp_path / "out")])  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mm_projector_type": "mlp3x_gelu"}, "mm_projector_type 'mlp3x_gelu'"),
        ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio 'anyres_max_9'"),
        ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "flat"}, "mm_patch_merge_type 'flat'"),
        ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature 'cls'"),
        ({"mm_hidden_size": 1024}, "mm_hidden_size 1024"),
        ({"model_type": "llava_mpt"}, "model_type 'llava_mpt'"),
    ],
)
def test_original_unsupported_config_is_refused(small_original_checkpoint, tmp_path, overrides, message):
    checkpoint = Path(shutil.copytree(small_original_checkpoint / "ckpt", tmp_path / "ckpt"))
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, **overrides}))
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_llava.main(["--source", "original", "--input", str(checkpoint), "--encoder",
                            str(small_original_checkpoint / "clip"), "--output", str(tmp_path / "out")])  # fmt: skip


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli_main(["convert", "llava", "--source", "hf", "--input", str(tmp_path / "absent"),
                     "--output", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["convert", "no-such-family"]) == 2
    assert "valid keys: llava" in capsys.readouterr().err
