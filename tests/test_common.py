"""Checks every registered family passes (DESIGN.md §7), parametrised over the family table's tiny presets."""

from __future__ import annotations

import copy
import inspect
import logging

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
from vlmzoo import presets
from vlmzoo.training import lora_config

from helpers import (
    TINY_CASES,
    case_id,
    batch_with_labels,
    build,
    component_prefixes,
    generated_prefix_length,
    logit_tokens,
    make_image,
    next_token_targets,
    sub_models,
    two_prompt_batch,
    user_prompt,
    vlmzoo_owned_prefixes,
    with_decoder_target,
)


def test_forward_shapes_loss_and_backward(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    batch, labels = batch_with_labels(model, batch)
    output = model(**batch, labels=labels)
    vocab = model.config.text_config.vocab_size
    assert output.logits.shape == (*labels.shape, vocab)
    # one entry per image, each (its image tokens, LM width), together filling every placeholder
    per_image = output.image_outputs.pooler_output
    assert len(per_image) == batch["input_ids"].shape[0]
    counts = (batch["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert [tuple(f.shape) for f in per_image] == [(n, model.config.text_config.hidden_size) for n in counts]
    # the loss is next-token cross-entropy over the non-ignored labels
    targets = next_token_targets(model, labels)
    expected = torch.nn.functional.cross_entropy(output.logits.reshape(-1, vocab), targets.reshape(-1))
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    for component, parts in model.component_parts().items():
        # every component learns from the loss (a tower's layers after the selected feature layer may not)
        grads = [p.grad for part in parts for p in part.parameters() if p.grad is not None]
        assert any(g.abs().sum() > 0 for g in grads), component


def test_save_and_auto_load_give_identical_logits(case, tmp_path):
    model, processor = build(case)
    batch, images, texts = two_prompt_batch(processor)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded_processor) is type(processor)
    assert type(reloaded_processor.image_processor) is type(processor.image_processor)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is type(processor.image_processor)
    reloaded_batch = reloaded_processor(images=images, text=texts, return_tensors="pt", padding=True)
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


def test_generate_with_and_without_cache_agree(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    kwargs = dict(max_new_tokens=6, do_sample=False, suppress_tokens=[model.config.image_token_id])
    with_cache = model.generate(**batch, use_cache=True, **kwargs)
    without_cache = model.generate(**batch, use_cache=False, **kwargs)
    assert with_cache.shape == (2, generated_prefix_length(model, batch) + 6)
    torch.testing.assert_close(with_cache, without_cache, rtol=0, atol=0)


def test_generate_encodes_images_once(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    calls = {}
    encoders = {name: m for name, m in sub_models(model).items() if m is not model.language_model}
    assert encoders
    for name, encoder in encoders.items():
        encoder.register_forward_hook(lambda *args, name=name: calls.update({name: calls.get(name, 0) + 1}))
    model.generate(**batch, max_new_tokens=4, do_sample=False, suppress_tokens=[model.config.image_token_id])
    assert calls == {name: 1 for name in encoders}


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
    n_tokens = int((input_ids == image_token).sum())
    with pytest.raises(ValueError, match=f"the text has {n_tokens} image tokens but the images produce {n_tokens + 1}"):
        model(**{**batch, "input_ids": input_ids})


def test_image_tokens_without_pixels_embed_as_text_with_one_warning(case, caplog):
    """As native transformers: no pixels -> the placeholders are ordinary tokens, and a warning says why."""
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    text_only = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    text_only = with_decoder_target(model, text_only)
    logging.getLogger().warning_once.cache_clear()  # transformers warns once per process and message
    with torch.no_grad(), caplog.at_level("WARNING"):
        logits = model(**text_only).logits
        model(**text_only)
        embeds = model.get_input_embeddings()(batch["input_ids"])
        if model.config.is_encoder_decoder:  # the same prompt as embeddings: nothing is placed in them either
            reference = model(**{**text_only, "input_ids": None, "inputs_embeds": embeds}).logits
        else:
            hidden = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
            reference = model.lm_head(hidden)
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)
    assert caplog.text.count("no image pixels were given") == 1


def _component_of_each_parameter(model):
    """parameter name -> the components that own it (by identity)."""
    owners = {}
    for component, parts in model.component_parts().items():
        for part in parts:
            for parameter in [part] if isinstance(part, torch.nn.Parameter) else part.parameters():
                owners.setdefault(id(parameter), set()).add(component)
    return {name: owners.get(id(p), set()) for name, p in model.named_parameters()}


def test_every_parameter_belongs_to_exactly_one_component(case):
    for model in build(case)[0], build(case)[0].model:
        owners = _component_of_each_parameter(model)
        assert {name: comps for name, comps in owners.items() if len(comps) != 1} == {}
        assert set(model.component_parts()) == set(model.config.component_table)


def test_stage_freezing(case):
    model, _ = build(case)
    for stage, trained in model.config.training_stages.items():
        # something outside the stage left trainable by hand must be frozen again
        model.requires_grad_(True)
        counts = model.set_training_stage(stage)
        for name, parameter in model.named_parameters():
            (component,) = _component_of_each_parameter(model)[name]
            assert parameter.requires_grad == (component in trained), (stage, name)
        for component in model.config.component_table:
            owned = [p for n, p in model.named_parameters() if component in _component_of_each_parameter(model)[n]]
            assert counts[component] == (sum(p.numel() for p in owned) if component in trained else 0)
    with pytest.raises(ValueError, match="unknown training stage"):
        model.set_training_stage("pretraining-that-does-not-exist")


def test_stage_summary_is_logged_at_the_default_level(case, caplog):
    from transformers.utils import logging as hf_logging

    model, _ = build(case)
    with caplog.at_level("DEBUG"):
        model.set_training_stage("align")
    shown = [r.getMessage() for r in caplog.records if r.levelno >= hf_logging.get_verbosity()]
    for component in model.config.component_table:
        state = "trainable" if component in model.config.training_stages["align"] else "frozen"
        assert any(line.startswith(f"stage align: {component}") and state in line for line in shown), shown


def test_stage_naming_a_component_the_model_lacks_raises(case):
    model, _ = build(case)
    table = dict(model.config.component_table)
    # a stable component name (DESIGN.md §4) that this family does not have
    absent = next(name for name in ("qformer", "aux_vision_tower", "fusion", "vision_towers") if name not in table)
    model.config.training_stages = {**model.config.training_stages, "odd": [absent]}
    with pytest.raises(ValueError, match=rf"trains \['{absent}'\], which this model does not have"):
        model.set_training_stage("odd")
    assert dict(model.config.component_table) == table


def test_lora_train_step_merge_gives_identical_logits(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    model.set_training_stage("instruct")
    peft_model = get_peft_model(model, lora_config(model, r=4))
    names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)
    adapted = tuple(f"base_model.model.{p}." for p in component_prefixes(model)["language_model"])
    saved = tuple(f"base_model.model.{p}." for c in model.config.training_stages["instruct"] if c != "language_model"
                  for p in component_prefixes(model)[c])
    assert all(n.startswith(adapted) if "lora_" in n else n.startswith(saved) for n in names), names
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    batch, labels = batch_with_labels(model, batch)
    peft_model.train()
    peft_model(**batch, labels=labels).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(**batch).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(**batch).logits
    # float32 rounding of the merged weights, relative to the logits' scale (T5's reach ~30)
    tolerance = 1e-5 * max(1.0, unmerged.abs().max().item())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=tolerance)


def test_no_split_modules_come_from_sub_models(case):
    model, _ = build(case)
    # what accelerate must keep on one device: every sub-model's own unsplittable layers
    models = sub_models(model)
    assert len(models) >= 2
    for name, sub_model in models.items():
        assert sub_model._no_split_modules, name
        assert set(sub_model._no_split_modules) <= set(model._no_split_modules), name


def test_from_pretrained_rebuilds_buffers_and_initialises_missing_weights(case, tmp_path):
    """from_pretrained builds on the meta device: buffers and absent weights must come back initialised."""
    from safetensors.torch import load_file, save_file

    model, _ = build(case)
    model.save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    state = load_file(weights_file)
    owned = tuple(vlmzoo_owned_prefixes(model))
    dropped = [key for key in state if key.startswith(owned)]
    assert dropped
    save_file({k: v for k, v in state.items() if k not in dropped}, weights_file, metadata={"format": "pt"})

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    fresh_buffers = dict(model.named_buffers())
    for name, buffer in reloaded.named_buffers():
        torch.testing.assert_close(buffer, fresh_buffers[name], rtol=0, atol=0, msg=name)
    reloaded_params = dict(reloaded.named_parameters())
    for key in dropped:
        value = reloaded_params[key]
        assert torch.isfinite(value).all(), key
        if isinstance(reloaded.get_submodule(key.rsplit(".", 1)[0]), torch.nn.LayerNorm):
            expected = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
            assert torch.equal(value, expected), key  # a norm starts as the identity
        elif key.endswith("weight"):
            assert 0 < value.std() < 1, key  # drawn from the init distribution, not left as garbage / zeros
        else:
            assert torch.equal(value, torch.zeros_like(value)), key  # biases start at zero


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_every_sub_model(case, tmp_path, implementation):
    model, _ = build(case)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation=implementation)
    for name, sub_model in sub_models(reloaded).items():
        assert sub_model.config._attn_implementation == implementation, name


def test_bfloat16_load_takes_float32_pixels(case, tmp_path):
    """A bf16 model fed the processor's float32 pixels casts them itself and stays close to fp32."""
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    batch = with_decoder_target(model, batch)
    model.save_pretrained(tmp_path)
    half = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert batch["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        expected = model(**batch).logits
        logits = half(**batch).logits
    assert logits.dtype == torch.bfloat16
    mask = logit_tokens(model, batch)[1]
    assert (logits.float() - expected)[mask].abs().max() < 0.05 * expected[mask].abs().max() + 0.05


# ----- transformers 5.24 conventions (DESIGN.md §4) ------------------------------------------------------
def test_return_dict_false_gives_the_output_as_a_tuple(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        base_tuple = model.model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits, rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head(base_tuple[0]), as_dict.logits, rtol=0, atol=0)


def test_cache_is_the_keyword_and_past_key_values_still_works_with_a_warning(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    batch = with_decoder_target(model, batch)
    tokens, _ = logit_tokens(model, batch)
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        assert prefill.cache is not None and prefill.cache.get_seq_length() == tokens.shape[1]
        next_ids = prefill.logits[:, -1:].argmax(-1)
        if model.config.is_encoder_decoder:  # the decoder extends its target; the encoder's prompt and mask stay
            step_inputs = {**batch, "decoder_input_ids": next_ids}
            full_inputs = {**batch, "decoder_input_ids": torch.cat([tokens, next_ids], 1)}
        else:
            mask = torch.cat([batch["attention_mask"], torch.ones_like(next_ids)], dim=1)
            step_inputs = {"input_ids": next_ids, "attention_mask": mask}
            full_inputs = {**batch, "input_ids": torch.cat([tokens, next_ids], 1), "attention_mask": mask}
        step = model(**step_inputs, cache=copy.deepcopy(prefill.cache))
        with pytest.warns(FutureWarning, match="past_key_values"):
            old_name = model(**step_inputs, past_key_values=copy.deepcopy(prefill.cache))
        full = model(**full_inputs)
    torch.testing.assert_close(step.logits, old_name.logits, rtol=0, atol=0)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-5)


def test_image_hidden_states_is_the_deprecated_alias_of_image_outputs(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    with torch.no_grad():
        output = model(**batch)
    assert output.image_hidden_states is output.image_outputs.pooler_output


def test_mm_encoder_outputs_replace_the_pixels(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    # the pixels and the family's own inputs that describe them (image_sizes, qformer_input_ids, image_grid_thw, ...)
    # go to get_image_features; the family's inputs stay with the forward too (M-RoPE's positions read the grids)
    accepted = inspect.signature(getattr(model.model, model.model.feature_method("image"))).parameters
    image_inputs = {"pixel_values", *(name for name in model.model.family_input_names if name in accepted)}
    pixels = {key: value for key, value in batch.items() if key in image_inputs}
    text = {key: value for key, value in batch.items() if key != "pixel_values"}
    with torch.no_grad():
        expected = model(**batch).logits
        encoded = model.get_image_features(**pixels)
        logits = model(**text, mm_encoder_outputs={"image": encoded}).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        model(**batch, mm_encoder_outputs={"image": encoded})


GENERATION_MODES = {
    "greedy": {},
    "beam": {"num_beams": 2},
    "static_cache": {"cache_implementation": "static"},
    "chunked_prefill": {"prefill_chunk_size": 7},
}


@pytest.mark.parametrize("mode", list(GENERATION_MODES))
def test_generation_modes_agree_with_plain_greedy_or_run_per_prompt(case, mode):
    model, processor = build(case)
    batch, images, texts = two_prompt_batch(processor)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, suppress_tokens=[model.config.image_token_id])
    output = model.generate(**batch, **GENERATION_MODES[mode], **kwargs, return_dict_in_generate=True, output_scores=True)
    generated = output.sequences
    assert generated.shape == (2, generated_prefix_length(model, batch) + 5)
    if mode == "beam":
        # the score beam search reports for each kept sequence is that sequence's log-probability under a plain
        # forward (length-normalised over the 5 new tokens): the cached, beam-reordered steps computed what the
        # model computes (beam search need not beat greedy with 2 beams, so that is not asserted)
        expected = _sequence_log_prob(model, batch, generated)
        torch.testing.assert_close(output.sequences_scores * 5, expected, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(generated, model.generate(**batch, **kwargs), rtol=0, atol=0)


def _sequence_log_prob(model, batch, sequences):
    prompt_length = generated_prefix_length(model, batch)
    if model.config.is_encoder_decoder:  # the decoder reads the generated sequence (start token first)
        inputs = {**batch, "decoder_input_ids": sequences}
    else:
        mask = torch.cat([batch["attention_mask"], torch.ones_like(sequences[:, prompt_length:])], dim=1)
        inputs = {**batch, "input_ids": sequences, "attention_mask": mask}
    with torch.no_grad():
        log_probs = model(**inputs).logits[:, prompt_length - 1 : -1].log_softmax(-1)
    return log_probs.gather(-1, sequences[:, prompt_length:, None]).squeeze(-1).sum(-1)


def test_a_decode_step_compiles_with_fullgraph_on_a_static_cache(case):
    from transformers import EncoderDecoderCache, StaticCache

    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            # the decoder's self-attention and its cross-attention over the encoded prompt, both static
            text_config = model.config.get_text_config(decoder=True)
            cache = EncoderDecoderCache(
                StaticCache(config=text_config, max_cache_len=8), StaticCache(config=text_config, max_cache_len=length)
            )
            prefill = model(**batch, cache=cache, use_cache=True)
            next_ids = prefill.logits[:, -1:].argmax(-1)
            step_inputs = {"encoder_outputs": (prefill.encoder_last_hidden_state,), "decoder_input_ids": next_ids,
                           "attention_mask": batch["attention_mask"], "cache": cache}  # fmt: skip
        else:
            cache = StaticCache(config=model.config, max_cache_len=length + 4)
            prefill = model(**batch, cache=cache, use_cache=True)
            next_ids = prefill.logits[:, -1:].argmax(-1)
            mask = torch.cat([batch["attention_mask"], torch.ones(2, 4, dtype=torch.long)], dim=1)
            positions = batch["attention_mask"].sum(1, keepdim=True)
            step_inputs = {"input_ids": next_ids, "attention_mask": mask, "position_ids": positions, "cache": cache}
        eager = model(**{**step_inputs, "cache": copy.deepcopy(cache)}).logits
        torch._dynamo.reset()
        step = torch.compile(model.forward, fullgraph=True, backend="eager")
        compiled = step(**step_inputs).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_loss_honours_shift_labels(case):
    """Sequence-parallel trainers pass pre-shifted targets as ``shift_labels``; the loss must use them."""
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    batch, labels = batch_with_labels(model, batch)
    shift_labels = next_token_targets(model, labels)
    other_shift = shift_labels.roll(1, dims=1)
    with torch.no_grad():
        plain = model(**batch, labels=labels).loss
        shifted = model(**batch, labels=labels, shift_labels=shift_labels).loss
        labels_changed = model(**batch, labels=labels.flip(1), shift_labels=shift_labels).loss
        targets_changed = model(**batch, labels=labels, shift_labels=other_shift).loss
    torch.testing.assert_close(shifted, plain)  # the same targets, given pre-shifted
    torch.testing.assert_close(labels_changed, shifted, rtol=0, atol=0)
    assert not torch.isclose(targets_changed, shifted)


def test_a_model_loaded_with_every_weight_missing_equals_a_fresh_one(case, monkeypatch):
    """_init_weights reaches every tensor (the towers' and the LM's included), so nothing stays uninitialised.

    With the init seeded per module, building the model and loading it from an empty state dict must give the
    same tensors; a module whose init were skipped would keep the meta device's garbage or a generic init.
    """
    from transformers import PreTrainedModel, set_seed

    initialize = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        set_seed(0)
        initialize(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    family, preset = case
    config = presets.get_config(family, preset)
    model_class = vlmzoo.get_family(family).for_generation_class
    for cls in (model_class, vlmzoo.get_family(family).model_class):
        fresh = cls(copy.deepcopy(config)).state_dict()
        loaded = cls.from_pretrained(None, config=copy.deepcopy(config), state_dict={}).state_dict()
        assert sorted(fresh) == sorted(loaded)
        assert [key for key in fresh if not torch.equal(fresh[key], loaded[key])] == []


@pytest.mark.parametrize("size", [(48, 80), (100, 40), (64, 64), (17, 300)])
def test_processor_counts_image_tokens_without_pixels_as_it_expands_them(case, size):
    """``_get_num_multimodal_tokens`` (the serving engines' hook) agrees with the processor's own expansion."""
    _, processor = build(case)
    height, width = size
    text = user_prompt(processor, "What is it?")
    expanded = processor(images=[make_image(width, height)], text=[text], return_tensors="pt")
    placeholders = int((expanded["input_ids"] == processor.image_token_id).sum())
    counted = processor._get_num_multimodal_tokens(image_sizes=[size, size])
    assert counted.num_image_tokens == [placeholders, placeholders]
    # patches as the pixels hold them: one view per image, AnyRes' views, or native resolution's packed patches
    pixels = expanded["pixel_values"]
    patches = {2: pixels.shape[0], 4: 1, 5: pixels.shape[1]}[pixels.dim()]
    assert counted.num_image_patches == [patches, patches]


def test_activation_checkpointing_gives_the_same_gradients(case):
    """Every sub-model recomputes its layers in backward; the gradients must not change (dropout draws included)."""
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    batch, labels = batch_with_labels(model, batch)
    model.set_training_stage("full")
    model.train()

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout draws in both runs
        model(**batch, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed_layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert checkpointed_layers
    checkpointed = gradients()
    assert set(checkpointed) == set(plain)
    for name in plain:
        # the recompute may sum in another order: float32 rounding, relative to the gradient's scale
        tolerance = 4e-6 * max(1.0, plain[name].abs().max().item())
        torch.testing.assert_close(checkpointed[name], plain[name], atol=tolerance, rtol=0, msg=name)


def test_forwards_document_every_argument_with_its_type_and_name_what_they_return(case):
    """help(model.forward) shows each argument (the family's own included) with its type, and the return annotation
    names the class the forward returns."""
    import inspect
    import typing

    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    batch = with_decoder_target(model, batch)
    for module in (model, model.model):
        signature = inspect.signature(module.forward)
        documented = module.forward.__doc__ or ""
        for name, parameter in signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                assert "**kwargs" in documented
                continue
            assert parameter.annotation is not inspect.Parameter.empty, name
            assert f"\n        {name} (`" in documented, f"{type(module).__name__}.forward does not document {name}"
        with torch.no_grad():
            output = module(**batch)
        returned = typing.get_args(signature.return_annotation)
        assert type(output) in returned and tuple in returned, (type(output), signature.return_annotation)


DECODER_ONLY_CASES = [case for case in TINY_CASES if not presets.get_config(*case).is_encoder_decoder]


@pytest.mark.parametrize("case", DECODER_ONLY_CASES, ids=case_id)
def test_a_text_decode_step_goes_straight_to_the_language_model_with_the_same_logits(case):
    """After prefill, a step that only continues the text skips the media path (as native generation does) and
    gives the logits the full path gives; a family with its own positions keeps its position hook on that step."""
    model, processor = build(case)
    plain_positions = type(model.model).compute_position_ids is vlmzoo.ZooVLMModel.compute_position_ids
    batch, _, _ = two_prompt_batch(processor)
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        token = prefill.logits[:, -1:].argmax(-1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        cache = copy.deepcopy(prefill.cache)
        calls = []
        hook = model.model.register_forward_pre_hook(lambda *args: calls.append(1))
        fast = model(input_ids=token, attention_mask=mask, cache=prefill.cache, use_cache=True).logits
        hook.remove()
        assert (calls == []) == plain_positions  # the base model's forward (placement, media) ran only if needed
        full = model.model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
        torch.testing.assert_close(fast, model.lm_head(full.last_hidden_state), rtol=0, atol=0)


# ----- padding-free (packed) batches: docs/training.md, vlmzoo/modeling/packing.py ------------------------------------
def _packed_and_padded(model, processor, count: int = 3):
    from _synthetic import make_conversations

    from vlmzoo.training import VLMDataCollator

    examples = make_conversations(count, seed=4)  # mixed image sizes and answer lengths: rows of different lengths
    padded = VLMDataCollator(processor, model=model)(examples)
    packed = VLMDataCollator(processor, model=model, packing=True)(examples)
    return padded, packed


def _loss_and_gradients(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", DECODER_ONLY_CASES, ids=case_id)
def test_a_packed_batch_gives_the_padded_batch_loss_and_gradients(case):
    """The same samples in one padding-free row: the loss (the mean over the same learned tokens) and every
    parameter's gradient are the padded batch's, in float32."""
    model, processor = build(case)
    model.requires_grad_(True)
    padded, packed = _packed_and_padded(model, processor)
    lengths = padded["attention_mask"].sum(1)
    assert bool((lengths != lengths[0]).any())  # the rows really differ in length: the padded batch has padding
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, int(lengths.sum()))
    padded_loss, padded_grads = _loss_and_gradients(model, padded)
    packed_loss, packed_grads = _loss_and_gradients(model, packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-5)
    # every component learns (a tower's layers after the selected feature layer may not, in both batches alike)
    assert set(packed_grads) == set(padded_grads)
    for component, prefixes in component_prefixes(model).items():
        assert any(name.startswith(tuple(prefixes)) for name in packed_grads), component
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("case", DECODER_ONLY_CASES, ids=case_id)
def test_packed_samples_do_not_see_each_other(case, implementation):
    """Changing the first sample's text and image changes its own logits and not one logit of the other samples."""
    model, processor = build(case)
    model.set_attn_implementation(implementation)
    _, packed = _packed_and_padded(model, processor)
    ids = packed["input_ids"]
    first_length = int((packed["position_ids"].view(-1, ids.shape[1])[0] == 0).nonzero()[1])  # sample 1 starts
    image_token = model.config.image_token_id
    where = next(i for i in range(1, first_length) if ids[0, i] != image_token)  # a text token of sample 0
    changed_ids = ids.clone()
    changed_ids[0, where] = next(t for t in range(4, 60) if t not in (int(ids[0, where]), image_token))
    changed_pixels = packed["pixel_values"].clone()
    changed_pixels[0] = torch.randn(changed_pixels[0].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = model(**packed).logits
        changed = model(**{**packed, "input_ids": changed_ids, "pixel_values": changed_pixels}).logits
    assert not torch.allclose(changed[0, where:first_length], logits[0, where:first_length], atol=1e-3)
    torch.testing.assert_close(changed[0, first_length:], logits[0, first_length:], rtol=0, atol=1e-6)
