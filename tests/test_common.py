"""Checks every registered family passes (DESIGN.md §7), parametrised over the family table's tiny presets."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
)

import vlmzoo
from vlmzoo.training import lora_config

from helpers import build, make_image, two_prompt_batch, user_prompt


def test_forward_shapes_loss_and_backward(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    output = model(**batch, labels=labels)
    vocab = model.config.text_config.vocab_size
    assert output.logits.shape == (*batch["input_ids"].shape, vocab)
    n_image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert output.image_hidden_states.shape == (n_image_tokens, model.config.text_config.hidden_size)
    # the loss is next-token cross-entropy over the non-ignored labels
    shift_logits, shift_labels = output.logits[:, :-1], labels[:, 1:]
    expected = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, vocab), shift_labels.reshape(-1))
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    for name in ("vision_tower", "multi_modal_projector", "language_model"):
        # (the tower's layers after the selected feature layer get no gradient, as in LLaVA)
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert any(g.abs().sum() > 0 for g in grads), name


def test_save_and_auto_load_give_identical_logits(case, tmp_path):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded_processor) is type(processor)
    assert type(reloaded_processor.image_processor) is type(processor.image_processor)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is type(processor.image_processor)
    reloaded_batch = reloaded_processor(images=_images(batch, processor), text=_texts(batch, processor),
                                        return_tensors="pt", padding=True)
    for key, value in batch.items():
        torch.testing.assert_close(reloaded_batch[key], value, rtol=0, atol=0)

    for auto_class in (AutoModelForImageTextToText, AutoModelForMultimodalLM, vlmzoo.AutoModelForVision2Seq):
        reloaded = auto_class.from_pretrained(tmp_path).eval()
        assert type(reloaded) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is type(model.model)
    with torch.no_grad():
        hidden = base(**batch).last_hidden_state
    torch.testing.assert_close(model.lm_head(hidden), expected, rtol=0, atol=0)


# the images/texts of two_prompt_batch, rebuilt for the reloaded processor
def _images(batch, processor):
    return [make_image(80, 48, seed=1), make_image(40, 100, seed=2)]


def _texts(batch, processor):
    return [user_prompt(processor, "What color is the shape?"), user_prompt(processor, "Where is it?")]


def test_generate_with_and_without_cache_agree(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    kwargs = dict(max_new_tokens=6, do_sample=False, suppress_tokens=[model.config.image_token_id])
    with_cache = model.generate(**batch, use_cache=True, **kwargs)
    without_cache = model.generate(**batch, use_cache=False, **kwargs)
    assert with_cache.shape == (2, batch["input_ids"].shape[1] + 6)
    torch.testing.assert_close(with_cache, without_cache, rtol=0, atol=0)


def test_generate_encodes_images_once(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    model.generate(**batch, max_new_tokens=4, do_sample=False, suppress_tokens=[model.config.image_token_id])
    handle.remove()
    assert len(calls) == 1


def test_batched_equals_unbatched(case):
    model, processor = build(case)
    batch, images, texts = two_prompt_batch(processor)
    with torch.no_grad():
        batched = model(**batch).logits
        for row, (image, text) in enumerate(zip(images, texts)):
            single = processor(images=[image], text=[text], return_tensors="pt")
            logits = model(**single).logits[0]
            length = logits.shape[0]
            # left padding: the prompt is right-aligned in the batch
            torch.testing.assert_close(batched[row, -length:], logits, rtol=1e-4, atol=1e-5)


def test_eager_equals_sdpa(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        mask = batch["attention_mask"].bool().unsqueeze(-1)
        torch.testing.assert_close(
            eager(**batch).logits.masked_select(mask), model(**batch).logits.masked_select(mask), rtol=1e-4, atol=1e-5
        )


def test_image_token_count_mismatch_raises(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    image_token = model.config.image_token_id
    input_ids = batch["input_ids"].clone()
    first = (input_ids[0] == image_token).nonzero()[0, 0]
    input_ids[0, first] = processor.tokenizer.pad_token_id + 0  # one placeholder too few
    with pytest.raises(ValueError, match="image tokens"):
        model(**{**batch, "input_ids": input_ids})
    with pytest.raises(ValueError, match="image tokens"):  # text with placeholders but no pixels
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_stage_freezing(case):
    model, _ = build(case)
    for stage, trained in model.config.training_stages.items():
        counts = model.set_training_stage(stage)
        for component, parts in model.stage_component_modules().items():
            params = [p for part in parts if part is not None
                      for p in ([part] if isinstance(part, torch.nn.Parameter) else part.parameters())]
            assert all(p.requires_grad == (component in trained) for p in params), (stage, component)
            expected = sum(p.numel() for p in {id(p): p for p in params}.values()) if component in trained else 0
            assert counts[component] == expected
    with pytest.raises(ValueError, match="unknown training stage"):
        model.set_training_stage("pretraining-that-does-not-exist")


def test_lora_train_step_merge_gives_identical_logits(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    model.set_training_stage("instruct")
    peft_model = get_peft_model(model, lora_config(model, r=4))
    names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)
    assert not any("vision_tower" in n for n in names)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    peft_model.train()
    peft_model(**batch, labels=labels).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(**batch).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_no_split_modules_come_from_sub_models(case):
    model, _ = build(case)
    # what accelerate must keep on one device: the LM's decoder layers and the tower's encoder layers
    assert type(model.language_model.layers[0]).__name__ in model._no_split_modules
    tower_layer = next(m for m in model.vision_tower.modules() if type(m).__name__.endswith("EncoderLayer"))
    assert type(tower_layer).__name__ in model._no_split_modules


def test_from_pretrained_rebuilds_buffers_and_initialises_missing_weights(case, tmp_path):
    """from_pretrained builds on the meta device: buffers and absent weights must come back initialised."""
    from safetensors.torch import load_file, save_file

    model, _ = build(case)
    model.save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    state = load_file(weights_file)
    dropped = [key for key in state if key.startswith("model.multi_modal_projector.") or key.startswith("model.image_newline.")]
    save_file({k: v for k, v in state.items() if k not in dropped}, weights_file, metadata={"format": "pt"})

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    fresh_buffers = dict(model.named_buffers())
    for name, buffer in reloaded.named_buffers():
        torch.testing.assert_close(buffer, fresh_buffers[name], rtol=0, atol=0, msg=name)
    reloaded_params = dict(reloaded.named_parameters())
    for key in dropped:
        value = reloaded_params[key]
        assert torch.isfinite(value).all(), key
        if key.endswith("weight"):
            assert 0 < value.std() < 1, key  # drawn from the init distribution, not left as garbage / zeros
        else:
            assert torch.equal(value, torch.zeros_like(value)), key  # biases start at zero


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_every_sub_model(case, tmp_path, implementation):
    model, _ = build(case)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation=implementation)
    assert reloaded.language_model.config._attn_implementation == implementation
    assert reloaded.vision_tower.config._attn_implementation == implementation


def test_bfloat16_load_takes_float32_pixels(case, tmp_path):
    """A bf16 model fed the processor's float32 pixels casts them itself and stays close to fp32."""
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    model.save_pretrained(tmp_path)
    half = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert batch["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        expected = model(**batch).logits
        logits = half(**batch).logits
    assert logits.dtype == torch.bfloat16
    mask = batch["attention_mask"].bool()
    assert (logits.float() - expected)[mask].abs().max() < 0.05 * expected[mask].abs().max() + 0.05
