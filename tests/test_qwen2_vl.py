"""Qwen2-VL: conversion from transformers' checkpoints and parity with ``Qwen2VLForConditionalGeneration`` (fp32,
max |dlogit| <= 1e-5), M-RoPE on a Llama decoder, the merger as the projector, the family's own input checks.

The references are tiny random transformers models saved with ``save_pretrained`` (the on-disk layout the converter
reads); the inputs are the model's own contract (packed patches with their grids), built here from random pixels
with the placement transformers' processor gives them (one placeholder per merged patch between
``<|vision_start|>`` and ``<|vision_end|>``), so these tests stand apart from the processor's own parity tests.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForImageTextToText,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

import vlmzoo
from vlmzoo.configuration.configuration_qwen2_vl import ZooQwen2VLConfig
from vlmzoo.modeling.modeling_qwen2_vl import ZooQwen2VLForConditionalGeneration
from vlmzoo.conversion_scripts import convert_qwen2_vl
from vlmzoo.modeling.rope import MultimodalRotaryEmbedding

PARITY_ATOL = 1e-5
SUMMARY = re.compile(r"converted (\d+) tensors, (\d+) unused, (\d+) missing")
PAD, START, END, IMAGE, VIDEO = 2, 3, 6, 4, 5
PATCH_VALUES = 3 * 2 * 14 * 14

TEXT = dict(
    hidden_size=32, vocab_size=99, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
    num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=PAD, tie_word_embeddings=True,
    rope_parameters={"type": "mrope", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
)  # fmt: skip
VISION = dict(depth=2, embed_dim=32, hidden_act="quick_gelu", hidden_size=32, mlp_ratio=4, num_heads=4, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip


def reference_model(seed: int = 0, tie: bool = True) -> Qwen2VLForConditionalGeneration:
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config={**TEXT, "tie_word_embeddings": tie}, vision_config=dict(VISION), vision_start_token_id=START,
        vision_end_token_id=END, image_token_id=IMAGE, video_token_id=VIDEO, tie_word_embeddings=tie,
    )  # fmt: skip
    return Qwen2VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def converted(request, tmp_path_factory):
    """A reference saved as transformers writes it, converted with the CLI entry point."""
    source, output = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("converted") / "out"
    reference = reference_model(tie=request.param)
    reference.save_pretrained(source)
    # transformers' rule for the text after a video, so that every video's logits equal transformers'
    code = convert_qwen2_vl.main(["--source", "hf", "--input", str(source), "--output", str(output),
                                  "--transformers_positions"])  # fmt: skip
    assert code == 0
    return reference, source, output


def block(token: int, tokens: int) -> list[int]:
    return [START, *[token] * tokens, END]


def media_batch(generator: torch.Generator) -> dict:
    """Two left-padded rows: the first with an image of grid (1, 4, 6) and a video of grid (2, 4, 4), the second
    with an image of grid (1, 2, 2) (odd sizes: 6 and 1 merged tokens)."""
    image_grids, video_grids = torch.tensor([[1, 4, 6], [1, 2, 2]]), torch.tensor([[2, 4, 4]])
    rows = [
        [7, *block(IMAGE, 6), 8, 9, *block(VIDEO, 8), 10, 11],
        [12, *block(IMAGE, 1), 13, 14, 15, 16, 17, 18, 19, 20, 21],
    ]
    width = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    types = torch.zeros_like(input_ids).masked_fill(input_ids == IMAGE, 1).masked_fill(input_ids == VIDEO, 2)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(int(image_grids.prod(-1).sum()), PATCH_VALUES, generator=generator),
        "image_grid_thw": image_grids,
        "pixel_values_videos": torch.randn(int(video_grids.prod(-1).sum()), PATCH_VALUES, generator=generator),
        "video_grid_thw": video_grids,
        "mm_token_type_ids": types,
    }


def test_conversion_accounts_for_every_tensor_and_loads_with_auto(converted, capsys):
    reference, source, output = converted
    assert convert_qwen2_vl.main(["--source", "hf", "--input", str(source), "--output", str(output),
                                  "--transformers_positions", "--overwrite"]) == 0  # fmt: skip
    summary = SUMMARY.search(capsys.readouterr().out)
    assert summary and summary.group(2, 3) == ("0", "0")
    with safe_open(source / "model.safetensors", "pt") as stored:
        keys = list(stored.keys())
    assert int(summary.group(1)) == len(keys)
    assert any(key.startswith("visual.merger.") for key in keys)  # the layout the converter reads
    model = AutoModelForImageTextToText.from_pretrained(output)
    assert type(model) is ZooQwen2VLForConditionalGeneration
    assert model.config.mrope_section == [2, 1, 1]
    assert model.config.text_config.model_type == "qwen2"
    # the merger is the projector: the reference's visual.merger weights sit there
    torch.testing.assert_close(
        model.model.multi_modal_projector.ln_q.weight, reference.model.visual.merger.ln_q.weight, rtol=0, atol=0
    )


def test_logits_and_generation_equal_transformers(converted):
    reference, _, output = converted
    model = AutoModelForImageTextToText.from_pretrained(output).eval()
    batch = media_batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, ours = reference(**batch).logits, model(**batch).logits
    mask = batch["attention_mask"].bool()
    difference = (ours - expected)[mask].abs().max().item()
    assert difference <= PARITY_ATOL, difference
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    theirs = reference.generate(**batch, **settings)
    generated = model.generate(**batch, **settings)
    assert torch.equal(generated, theirs)
    assert torch.equal(generated, model.generate(**batch, use_cache=False, **settings))


def test_video_alone_and_positions_equal_transformers(converted):
    reference, _, output = converted
    model = AutoModelForImageTextToText.from_pretrained(output).eval()
    generator = torch.Generator().manual_seed(2)
    grid = torch.tensor([[4, 2, 4]])  # more merged frames (4) than rows (1) and columns (2)
    ids = torch.tensor([[7, *block(VIDEO, 8), 8, 9]])
    batch = {"input_ids": ids, "pixel_values_videos": torch.randn(32, PATCH_VALUES, generator=generator),
             "video_grid_thw": grid, "mm_token_type_ids": (ids == VIDEO).long() * 2}  # fmt: skip
    with torch.no_grad():
        difference = (model(**batch).logits - reference(**batch).logits).abs().max().item()
    assert difference <= PARITY_ATOL, difference
    ours, _ = model.model.get_rope_index(ids, batch["mm_token_type_ids"], video_grid_thw=grid)
    theirs, _ = reference.model.get_rope_index(ids, batch["mm_token_type_ids"], video_grid_thw=grid)
    assert torch.equal(ours, theirs)
    # the paper's rule (the converter's default) starts the text after the video's largest position instead
    model.config.mrope_temporal_advance = True
    paper, _ = model.model.get_rope_index(ids, batch["mm_token_type_ids"], video_grid_thw=grid)
    video = ids[0] == VIDEO
    after = int(video.nonzero().max()) + 2  # the first text token after <|vision_end|>
    assert int(paper[:, 0, after].max()) == int(paper[:, 0, video].max()) + 2
    assert int(paper[0, 0, after]) > int(theirs[0, 0, after])


def tiny_llama_family_config() -> ZooQwen2VLConfig:
    text = {key: value for key, value in TEXT.items() if key != "rope_parameters"}
    return ZooQwen2VLConfig(
        text_config={**text, "model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
        vision_config={**VISION, "model_type": "qwen2_vl_vision"}, mrope_section=[2, 1, 1], image_token_id=IMAGE,
        video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
    )  # fmt: skip


def test_m_rope_on_a_llama_decoder_matches_plain_llama_on_text_and_caches_consistently():
    torch.manual_seed(0)
    model = ZooQwen2VLForConditionalGeneration(tiny_llama_family_config()).eval()
    assert isinstance(model.model.language_model.rotary_emb, MultimodalRotaryEmbedding)
    llama = LlamaForCausalLM(LlamaConfig(**model.config.text_config.to_dict())).eval()
    llama.model.load_state_dict(model.model.language_model.state_dict())
    llama.lm_head.weight = llama.model.embed_tokens.weight
    ids = torch.tensor([[7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]])
    with torch.no_grad():
        difference = (model(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max().item()
    assert difference <= PARITY_ATOL, difference
    batch = media_batch(torch.Generator().manual_seed(3))
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(**batch, **settings), model.generate(**batch, use_cache=False, **settings))


def test_the_merger_is_the_projector_and_trains_when_the_tower_is_frozen():
    torch.manual_seed(0)
    model = ZooQwen2VLForConditionalGeneration(tiny_llama_family_config())
    assert not hasattr(model.model.vision_tower, "merger") or isinstance(model.model.vision_tower.merger, torch.nn.Identity)
    model.set_training_stage("instruct")
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.model.multi_modal_projector.parameters())
    assert model.visual is model.model.vision_tower  # transformers' name


def test_images_of_a_batch_never_attend_to_each_other():
    """Packed images, block-diagonal attention: an image's features do not change when another image changes."""
    torch.manual_seed(0)
    model = ZooQwen2VLForConditionalGeneration(tiny_llama_family_config()).eval()
    generator = torch.Generator().manual_seed(4)
    grids = torch.tensor([[1, 4, 6], [1, 2, 2]])
    pixels = torch.randn(28, PATCH_VALUES, generator=generator)
    changed = pixels.clone()
    changed[24:] = torch.randn(4, PATCH_VALUES, generator=generator)  # only the second image
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            first, second = model.model.get_image_features(pixels, grids).pooler_output
            first_again, second_again = model.model.get_image_features(changed, grids).pooler_output
        torch.testing.assert_close(first, first_again, rtol=0, atol=0)
        assert not torch.allclose(second, second_again)
        # and one image alone gives the same features as inside the batch
        with torch.no_grad():
            (alone,) = model.model.get_image_features(pixels[:24], grids[:1]).pooler_output
        torch.testing.assert_close(alone, first, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(image_grid_thw=None), "pixel_values were given without image_grid_thw"),
        (dict(image_grid_thw=torch.tensor([[1, 4, 6], [1, 2, 4]])), "gives 32 patches .* but pixel_values holds 28"),
        (dict(image_grid_thw=torch.tensor([[1, 4, 6], [1, 1, 4]])), "not divisible by spatial_merge_size 2"),
        (dict(pixel_values=torch.randn(28, 100)), r"must be \(patches, 1176\) flattened patches"),
        (dict(video_grid_thw=torch.tensor([[2.0, 4.0, 4.0]])), "video_grid_thw must hold integers"),
    ],
)
def test_bad_patches_and_grids_raise_a_clear_error(change, message):
    torch.manual_seed(0)
    model = ZooQwen2VLForConditionalGeneration(tiny_llama_family_config()).eval()
    batch = {**media_batch(torch.Generator().manual_seed(5)), **change}
    with pytest.raises(ValueError, match=message):
        model(**batch)


def test_native_text_config_is_read_as_a_qwen2_decoder_with_its_defaults():
    config = ZooQwen2VLConfig(text_config=dict(TEXT), vision_config=dict(VISION), image_token_id=IMAGE,
                              video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)  # fmt: skip
    native = Qwen2VLConfig(text_config=dict(TEXT), vision_config=dict(VISION)).text_config
    assert config.text_config.model_type == "qwen2"
    assert config.mrope_section == [2, 1, 1]
    assert "mrope_section" not in config.text_config.rope_parameters
    assert config.text_config.rms_norm_eps == native.rms_norm_eps  # the native default, not Qwen2's
    with pytest.raises(ValueError, match=r"mrope_section=\[1, 1, 1\] must be three non-negative ints summing to"):
        ZooQwen2VLConfig(text_config=dict(TEXT, rope_parameters={"rope_type": "default"}), vision_config=dict(VISION),
                         mrope_section=[1, 1, 1], image_token_id=IMAGE, video_token_id=VIDEO,
                         vision_start_token_id=START, vision_end_token_id=END)  # fmt: skip
    with pytest.raises(ValueError, match="is the patch merger's output width and must equal"):
        ZooQwen2VLConfig(text_config=dict(TEXT), vision_config=dict(VISION, hidden_size=48), image_token_id=IMAGE,
                         video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)  # fmt: skip


def test_the_family_is_registered():
    family = vlmzoo.get_family("qwen2_vl")
    assert family.config_class is ZooQwen2VLConfig
    assert family.for_generation_class is ZooQwen2VLForConditionalGeneration


def test_the_collator_batches_image_and_video_conversations_and_packs_them():
    """Training data with videos: the collator takes video parts (frames in the messages), learns the replies only,
    and a packed batch gives the padded batch's loss."""
    import numpy as np
    from PIL import Image

    from vlmzoo import presets
    from vlmzoo.training import VLMDataCollator

    config = presets.get_config("qwen2_vl", "tiny")
    processor = presets.get_processor("qwen2_vl", "tiny", config)
    torch.manual_seed(0)
    model = ZooQwen2VLForConditionalGeneration(config).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    examples = [
        {"messages": [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What moves?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Color?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]},
    ]  # fmt: skip
    padded = VLMDataCollator(processor, model=model)(examples)
    assert padded["video_grid_thw"].shape == (1, 3) and padded["image_grid_thw"].shape == (1, 3)
    learned = padded["labels"][padded["labels"] != -100]
    assert processor.tokenizer.decode(learned).count("blue") == 1  # the replies (and their end), not the prompts
    assert not bool(((padded["labels"] != -100) & (padded["input_ids"] == config.video_token_id)).any())
    packed = VLMDataCollator(processor, model=model, packing=True)(examples)
    assert packed["position_ids"].shape == (4, 1, int(padded["attention_mask"].sum()))
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).loss, model(**padded).loss, rtol=1e-5, atol=1e-5)


def test_conversion_with_the_processor_matches_transformers_end_to_end(tmp_path, capsys):
    """A reference saved with transformers' processor (Qwen2VLImageProcessorPil + the tokenizer + chat template):
    the converted processor gives the same inputs for images of odd sizes, and the converted model the same logits
    on a left-padded batch and the same greedy generation."""
    from PIL import Image
    from transformers import AutoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from _reference_qwen2_vl import ImageOnlyQwen2VLProcessor
    from vlmzoo.processing.processing_qwen2_vl import tiny_qwen2_vl_tokenizer

    tokenizer = tiny_qwen2_vl_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(getattr(tokenizer, token)) for name, token in (
        ("image_token_id", "image_token"), ("video_token_id", "video_token"),
        ("vision_start_token_id", "vision_start_token"), ("vision_end_token_id", "vision_end_token"))}  # fmt: skip
    torch.manual_seed(0)
    text = {**TEXT, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}  # fmt: skip
    reference = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=dict(VISION), **ids)).eval()
    with torch.no_grad():  # a tiny random decoder's argmax is one token everywhere: spread its weights
        for name, parameter in reference.model.language_model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0, 0.3)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    reference_processor = ImageOnlyQwen2VLProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    source, output = tmp_path / "reference", tmp_path / "converted"
    reference.save_pretrained(source)
    reference_processor.save_pretrained(source)
    assert convert_qwen2_vl.main(["--source", "hf", "--input", str(source), "--output", str(output)]) == 0
    assert SUMMARY.search(capsys.readouterr().out).group(2, 3) == ("0", "0")
    model = AutoModelForImageTextToText.from_pretrained(output).eval()
    processor = AutoProcessor.from_pretrained(output)
    assert type(processor).__name__ == "ZooQwen2VLProcessor"

    rng = torch.Generator().manual_seed(7)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).byte().numpy()) for h, w in ((45, 130), (97, 61))]
    prompts = [
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Color?<|im_end|>\n<|im_start|>assistant\n",
    ]
    ours = processor(images=images, text=prompts, return_tensors="pt", padding=True, padding_side="left")
    theirs = reference_processor(images=images, text=prompts, return_tensors="pt", padding=True, padding_side="left")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    assert ours["image_grid_thw"].tolist() != [list(ours["image_grid_thw"][0])] * 2  # two different grids
    with torch.no_grad():
        expected, logits = reference(**theirs).logits, model(**ours).logits
    difference = (logits - expected)[ours["attention_mask"].bool()].abs().max().item()
    assert difference <= PARITY_ATOL, difference
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    generated = model.generate(**ours, **settings)
    assert torch.equal(generated, reference.generate(**theirs, **settings))
    assert len(set(generated[:, -6:].flatten().tolist())) > 1  # not one token repeated


def test_quick_demo_runs_both_stages_with_its_overrides(tmp_path):
    from vlmzoo import demo

    args = demo.parse_args(["--quick", "--family", "qwen2_vl", "--output-dir", str(tmp_path), "--num-eval", "6"])
    result = demo.run_demo(args)
    assert [stage.name for stage in result.stages] == ["align", "instruct"]
    align, instruct = (stage.trainable for stage in result.stages)
    assert align["language_model"] == 0 and align["vision_tower"] > 0 and align["multi_modal_projector"] > 0
    assert instruct["vision_tower"] > 0 and instruct["language_model"] > 0  # the demo's override (printed)
    assert result.model.config.mrope_section == [0, 4, 4]
    assert type(result.reloaded_model) is ZooQwen2VLForConditionalGeneration
    assert result.reloaded_model.config.mrope_section == [0, 4, 4]  # saved with the model
