"""The LLaVA training path end to end on tiny models: collator labels, the two-stage recipe with the HF
``Trainer``, loss normalisation under gradient accumulation, peft LoRA, gradient checkpointing.

Follows the LLaVA recipe (Liu et al. 2023, "Visual Instruction Tuning"; 1.5: "Improved Baselines"):
stage 1 ("align") trains only the projector, stage 2 ("instruct") the projector and the LLM, with the vision
tower frozen; LoRA fine-tuning puts adapters on the LLM and trains the projector in full. Everything runs on
CPU with the ``tiny`` / ``tiny-anyres`` presets, a few optimiser steps each. Expected values come from
independent computations (separate tokenisation, plain ``torch`` cross-entropy, parameter-name bookkeeping),
never from the code under test.
"""

from __future__ import annotations

import itertools

import peft
import pytest
import torch
import torch.nn.functional as F
from _synthetic import conversation, draw_shape, make_conversations, reply_texts
from transformers import AutoModelForImageTextToText, Trainer, TrainingArguments

import vlmzoo
from vlmzoo import presets
from vlmzoo.training import IGNORE_INDEX, VLMDataCollator, lora_config, set_training_stage

COMPONENT_PREFIXES = {
    "vision_tower": ("model.vision_tower.",),
    "multi_modal_projector": ("model.multi_modal_projector.", "model.image_newline."),
    "language_model": ("model.language_model.", "lm_head."),
}


# ----- builders ---------------------------------------------------------------------------------------
def build(preset: str, seed: int = 0):
    config = presets.get_config("llava", preset)
    processor = presets.get_processor("llava", preset, config)
    torch.manual_seed(seed)
    return vlmzoo.ZooLlavaForConditionalGeneration(config), processor


def component_of(name: str) -> str:
    matches = [component for component, prefixes in COMPONENT_PREFIXES.items() if name.startswith(prefixes)]
    assert len(matches) == 1, f"parameter {name} belongs to {matches}"
    return matches[0]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def changed_names(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    assert set(after) == set(before)
    return {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}


def train(model, processor, examples, tmp_path, max_steps: int = 3, **overrides) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **overrides,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=VLMDataCollator(processor))
    trainer.train()
    return trainer


def unused_tower_parameter_names(model) -> set[str]:
    """Tower tensors that cannot get a gradient: layers after the selected feature layer and post_layernorm.

    LLaVA reads ``hidden_states[vision_feature_layer]`` (the penultimate layer by default), so later layers and
    the final layer norm do not feed the projector.
    """
    config = model.config
    num_layers = config.vision_config.num_hidden_layers
    # hidden_states[i] is the output of layer i - 1 (hidden_states[0] is the embeddings)
    last_used_layer = (config.vision_feature_layer % (num_layers + 1)) - 1
    names = set()
    for name in model.state_dict():
        if not name.startswith("model.vision_tower."):
            continue
        if ".post_layernorm." in name:
            names.add(name)
        for layer in range(last_used_layer + 1, num_layers):
            if f".encoder.layers.{layer}." in name:
                names.add(name)
    return names


def reference_token_losses(model, examples, processor) -> torch.Tensor:
    """Per-token cross-entropies of the assistant replies, one example at a time, with plain torch."""
    collator = VLMDataCollator(processor)
    losses = []
    with torch.no_grad():
        for example in examples:
            batch = collator([example])
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            # next-token prediction: logits at position t predict the token at t + 1
            shifted_logits, shifted_labels = logits[0, :-1], labels[0, 1:]
            keep = shifted_labels != IGNORE_INDEX
            losses.append(F.cross_entropy(shifted_logits[keep], shifted_labels[keep], reduction="none"))
    return torch.cat(losses)


@pytest.fixture(scope="module")
def tiny_processor():
    return presets.get_processor("llava", "tiny")


# ----- 1. the collator ----------------------------------------------------------------------------------
def test_collator_labels_only_the_assistant_reply_and_eos(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    examples = make_conversations(4, seed=3)
    batch = VLMDataCollator(tiny_processor)(examples)
    input_ids, labels, attention_mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert labels.shape == input_ids.shape
    lengths = attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 1, "the examples should need padding"
    newline_id = tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline_id) == 1

    for row, example in enumerate(examples):
        (answer,) = reply_texts(example)
        # the template writes "ASSISTANT:" + " " + reply + eos inside {% generation %}, then "\n" outside
        reply_ids = tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        length = int(lengths[row])
        assert attention_mask[row, :length].all() and not attention_mask[row, length:].any(), "right padding"
        start, end = length - 1 - len(reply_ids), length - 1
        assert input_ids[row, start:end].tolist() == reply_ids
        assert input_ids[row, end].item() == newline_id[0]
        expected = torch.full_like(labels[row], IGNORE_INDEX)
        expected[start:end] = torch.tensor(reply_ids)
        assert torch.equal(labels[row], expected)
        # the image placeholders and the padding are never targets
        assert (input_ids[row] == tiny_processor.image_token_id).sum() == 16
        assert (labels[row][input_ids[row] == tiny_processor.image_token_id] == IGNORE_INDEX).all()
        assert (input_ids[row, length:] == tokenizer.pad_token_id).all()


def test_collator_labels_every_assistant_turn_of_a_multi_turn_chat(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    image = draw_shape("circle", "red", "left", 64, 64)
    messages = conversation(image, "What color is the shape?", "red")["messages"] + [
        {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
        {"role": "assistant", "content": "on the left"},
    ]
    batch = VLMDataCollator(tiny_processor)([{"messages": messages}])
    labels, input_ids = batch["labels"][0], batch["input_ids"][0]
    labelled = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    # split the labelled positions into contiguous runs: one run per assistant turn
    groups = itertools.groupby(enumerate(labelled), lambda pair: pair[1] - pair[0])
    runs = [[position for _, position in group] for _, group in groups]
    expected = [
        tokenizer(" " + text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        for text in ("red", "on the left")
    ]
    assert [input_ids[run].tolist() for run in runs] == expected
    assert [labels[run].tolist() for run in runs] == expected


def test_collator_rejects_bad_input(tiny_processor):
    collator = VLMDataCollator(tiny_processor)
    example = make_conversations(1)[0]
    with pytest.raises(ValueError, match="messages"):
        collator([{"messages": []}])
    with pytest.raises(ValueError, match="messages"):
        collator([])
    with pytest.raises(ValueError, match="messages"):
        collator([{"conversation": example["messages"]}])
    user_only = {"messages": example["messages"][:1]}
    with pytest.raises(ValueError, match="assistant"):
        collator([user_only])
    length = collator([example])["input_ids"].shape[1]
    assert VLMDataCollator(tiny_processor, max_length=length)([example])["input_ids"].shape[1] == length
    with pytest.raises(ValueError, match="max_length"):
        VLMDataCollator(tiny_processor, max_length=length - 1)([example])


# ----- 2. training stages with the Trainer ---------------------------------------------------------------
STAGE_CASES = [
    ("tiny", "align", {"multi_modal_projector"}),
    ("tiny-anyres", "align", {"multi_modal_projector"}),
    ("tiny", "instruct", {"multi_modal_projector", "language_model"}),
    ("tiny", "full", {"vision_tower", "multi_modal_projector", "language_model"}),
]


@pytest.mark.parametrize(("preset", "stage", "trained"), STAGE_CASES, ids=[f"{p}-{s}" for p, s, _ in STAGE_CASES])
def test_stage_trains_exactly_its_components(preset, stage, trained, tmp_path):
    model, processor = build(preset)
    counts = set_training_stage(model, stage)

    numel = {component: 0 for component in COMPONENT_PREFIXES}
    for name, parameter in model.named_parameters():
        numel[component_of(name)] += parameter.numel()
        assert parameter.requires_grad == (component_of(name) in trained), name
    assert counts == {component: numel[component] if component in trained else 0 for component in numel}
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if preset == "tiny-anyres":
        assert model.model.image_newline.weight.requires_grad

    before = snapshot(model)
    train(model, processor, make_conversations(6, seed=1), tmp_path)
    changed = changed_names(before, model)

    unreachable = unused_tower_parameter_names(model)
    assert unreachable, "the default feature layer (-2) leaves the tower's last layer unused"
    expected_changed = {name for name in before if component_of(name) in trained} - unreachable
    assert changed == expected_changed
    if preset == "tiny-anyres":
        assert "model.image_newline.weight" in changed


def test_unknown_stage_raises():
    model, _ = build("tiny")
    with pytest.raises(ValueError, match="align"):
        model.set_training_stage("pretrain")
    with pytest.raises(ValueError, match="instruct"):
        set_training_stage(model, "")


# ----- 3. loss normalisation (num_items_in_batch) ---------------------------------------------------------
def test_model_loss_divides_the_token_sum_by_num_items_in_batch(tiny_processor):
    model, _ = build("tiny")
    model.eval()
    examples = make_conversations(3, seed=5)
    batch = VLMDataCollator(tiny_processor)(examples)
    token_losses = reference_token_losses(model, examples, tiny_processor)
    with torch.no_grad():
        mean_loss = model(**batch).loss
        loss_over_17 = model(**batch, num_items_in_batch=17).loss
    torch.testing.assert_close(mean_loss, token_losses.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_over_17, token_losses.sum() / 17, rtol=1e-5, atol=1e-6)


def test_trainer_loss_with_gradient_accumulation_is_the_token_mean(tmp_path):
    model, processor = build("tiny")
    with torch.no_grad():  # sharper logits so token losses differ and per-batch means differ from the token mean
        model.lm_head.weight.mul_(30.0)
    examples = make_conversations(4, seed=2)
    token_losses = reference_token_losses(model.eval(), examples, processor)
    token_counts = [int((VLMDataCollator(processor)([e])["labels"][0, 1:] != IGNORE_INDEX).sum()) for e in examples]
    per_example_sums = torch.stack([chunk.sum() for chunk in token_losses.split(token_counts)])
    expected = token_losses.mean().item()

    # whichever two pairs the sampler draws, averaging per-micro-batch means would give another number
    for first_pair in itertools.combinations(range(4), 2):
        second_pair = [i for i in range(4) if i not in first_pair]
        means = [
            per_example_sums[list(pair)].sum() / sum(token_counts[i] for i in pair)
            for pair in (first_pair, second_pair)
        ]
        assert abs((means[0] + means[1]).item() / 2 - expected) > 1e-2

    trainer = train(model, processor, examples, tmp_path, max_steps=1, gradient_accumulation_steps=2)
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 1
    assert logged[0] == pytest.approx(expected, rel=1e-5)


# ----- 4. LoRA ----------------------------------------------------------------------------------------
def test_lora_trains_adapters_and_projector_copy_only(tmp_path):
    model, processor = build("tiny")
    peft_model = peft.get_peft_model(model, lora_config(model, r=4))
    module_names = [name for name, _ in peft_model.named_modules()]
    adapted = {name.rsplit(".lora_A", 1)[0] for name in module_names if name.endswith(".lora_A")}
    assert adapted, "no LoRA adapters were created"
    assert all(".language_model." in name for name in adapted)
    assert not any("vision_tower" in name or "lm_head" in name for name in adapted)
    # every linear layer of the language model's decoder layers is adapted: 7 per layer
    num_layers = model.config.text_config.num_hidden_layers
    assert len(adapted) == 7 * num_layers

    before = snapshot(peft_model)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    train(peft_model, processor, make_conversations(6, seed=4), tmp_path)
    changed = changed_names(before, peft_model)

    lora_names = {name for name in before if ".lora_A." in name or ".lora_B." in name}
    projector_copy = {name for name in before if "multi_modal_projector.modules_to_save." in name}
    assert lora_names and projector_copy
    assert all(".language_model." in name for name in lora_names)
    assert trainable == lora_names | projector_copy
    assert changed == lora_names | projector_copy
    assert any("multi_modal_projector.original_module." in name for name in before)

    # merging folds the adapters and the trained projector copy into a plain vlmzoo model
    peft_model.eval()
    batch = VLMDataCollator(processor)(make_conversations(2, seed=9))
    batch.pop("labels")
    with torch.no_grad():
        unmerged_logits = peft_model(**batch).logits
    merged = peft_model.merge_and_unload()
    assert type(merged) is vlmzoo.ZooLlavaForConditionalGeneration
    assert not any("lora_" in name or "modules_to_save" in name for name in merged.state_dict())
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-5, rtol=0)

    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(reloaded) is vlmzoo.ZooLlavaForConditionalGeneration
    with torch.no_grad():
        reloaded_logits = reloaded.eval()(**batch).logits
    torch.testing.assert_close(reloaded_logits, merged_logits, atol=0, rtol=0)


def test_lora_on_the_vision_tower_is_opt_in():
    model, _ = build("tiny")
    config = lora_config(model, components=("language_model", "vision_tower"))
    peft_model = peft.get_peft_model(model, config)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    tower_adapted = {name for name in adapted if ".vision_tower." in name}
    language_adapted = {name for name in adapted if ".language_model." in name}
    assert tower_adapted and language_adapted
    assert adapted == tower_adapted | language_adapted
    assert not any("lm_head" in name or "multi_modal_projector" in name for name in adapted)
    # CLIP: q/k/v/out_proj + fc1/fc2 in every encoder layer
    assert len(tower_adapted) == 6 * model.config.vision_config.num_hidden_layers


def test_lora_config_rejects_bad_components_and_stages():
    model, _ = build("tiny")
    with pytest.raises(ValueError, match="language_model"):
        lora_config(model, components=("text_model",))
    with pytest.raises(ValueError, match="instruct"):
        lora_config(model, stage="stage3")


# ----- 5. gradient checkpointing -----------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_gradients(tiny_processor):
    model, _ = build("tiny")
    model.set_training_stage("full")
    model.train()
    batch = VLMDataCollator(tiny_processor)(make_conversations(2, seed=7))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()  # transformers 5 name of gradient_checkpointing_enable
    layers = list(model.model.vision_tower.encoder.layers) + list(model.model.language_model.layers)
    assert all(layer.gradient_checkpointing for layer in layers)
    # with checkpointing on, each tower and LM layer is recomputed during backward. transformers checkpoints the
    # layer's `forward` (not `__call__`), so count entries into its attention block, which the recompute replays
    # (a pre-hook: torch stops the recompute early once the last saved tensor is rebuilt)
    attentions = [layer.self_attn for layer in layers]
    calls = {id(attention): 0 for attention in attentions}
    hooks = [a.register_forward_pre_hook(lambda m, _: calls.__setitem__(id(m), calls[id(m)] + 1)) for a in attentions]
    checkpointed = gradients()
    for hook in hooks:
        hook.remove()
    # the tower's last layer feeds nothing (features come from hidden_states[-2]): it runs once, no recompute
    tower_layers = model.model.vision_tower.encoder.layers
    expected_calls = [1 if layer is tower_layers[-1] else 2 for layer in layers]
    assert [calls[id(layer.self_attn)] for layer in layers] == expected_calls

    assert set(checkpointed) == set(plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=0, msg=name)


def test_lora_keeps_training_the_anyres_newline(tmp_path):
    """The newline vector belongs to the projector component: under LoRA it is a module to save."""
    model, processor = build("tiny-anyres")
    config = lora_config(model, r=4)
    assert "image_newline" in config.modules_to_save
    peft_model = peft.get_peft_model(model, config)
    newline_names = [n for n, p in peft_model.named_parameters() if "image_newline" in n and p.requires_grad]
    assert newline_names and all("modules_to_save" in n for n in newline_names)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if n in newline_names}
    train(peft_model, processor, make_conversations(4, seed=2), tmp_path)
    assert all(not torch.equal(before[n], p) for n, p in peft_model.named_parameters() if n in newline_names)
