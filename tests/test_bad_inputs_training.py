"""Hostile training set-ups every family inherits (docs/design.md §5, §7), parametrised over the family table's tiny
presets (the ``case`` fixture): training stages on a peft-wrapped model, the collator's layout against the model's
kind of language model, and batches with nothing to learn.

References are computed here: which parameters a LoRA stage may train is read from parameter names (peft's
``lora_`` / ``modules_to_save`` and the component prefixes taken before wrapping), and the loss is a loop-free
log-softmax written in the test. Nothing here names a family.
"""

from __future__ import annotations

import logging

import peft
import pytest
import torch

from vlmzoo.training import VLMDataCollator, lora_config, set_training_stage, trainable_parameter_names

from helpers import batch_with_labels, build, component_prefixes, make_image, next_token_targets, two_prompt_batch

WRAPPED = "base_model.model."


def _adapted(case, stage: str = "instruct"):
    """A tiny model with LoRA on its language model (``lora_config``'s default) for ``stage``, the PeftModel, and
    component -> the wrapped names' prefixes (taken before wrapping)."""
    model, processor = build(case)
    prefixes = {c: [WRAPPED + p + "." for p in names] for c, names in component_prefixes(model).items()}
    wrapped = peft.get_peft_model(model, lora_config(model, r=2, stage=stage))
    return model, wrapped, processor, prefixes


def _component_of(name: str, prefixes: dict[str, list[str]]) -> str:
    (component,) = [c for c, starts in prefixes.items() if any(name.startswith(s) for s in starts)]
    return component


def _is_adapter(name: str) -> bool:
    return ".lora_" in name or ".modules_to_save." in name


def _covered(model, wrapped, prefixes) -> set[str]:
    """The components that have an adapter or a modules_to_save copy in the wrapped model (from the names)."""
    return {_component_of(name, prefixes) for name, _ in wrapped.named_parameters() if _is_adapter(name)}


# ----- set_training_stage on a peft-wrapped model ----------------------------------------------------------------
def test_a_stage_on_a_lora_model_keeps_every_base_weight_frozen(case, caplog):
    model, wrapped, _, prefixes = _adapted(case)
    covered = _covered(model, wrapped, prefixes)
    assert "language_model" in covered
    tried = 0
    for stage, components in model.config.training_stages.items():
        if not set(components) <= covered:
            continue
        tried += 1
        with caplog.at_level(logging.DEBUG):
            counts = set_training_stage(wrapped, stage)
        trainable = set(trainable_parameter_names(wrapped))
        expected = {name for name, _ in wrapped.named_parameters()
                    if _is_adapter(name) and _component_of(name, prefixes) in components}  # fmt: skip
        assert trainable == expected, (stage, sorted(trainable ^ expected)[:5])
        sizes = dict(wrapped.named_parameters())
        for component in model.config.component_table:
            owned = sum(sizes[n].numel() for n in expected if _component_of(n, prefixes) == component)
            assert counts[component] == owned, (stage, component)
        assert any("the model has peft adapters: base weights stay frozen" in r.getMessage() for r in caplog.records)
    assert tried >= 1


def test_the_method_on_the_model_inside_the_wrapper_does_the_same(case):
    model, wrapped, _, _ = _adapted(case)
    through_wrapper = set_training_stage(wrapped, "instruct"), set(trainable_parameter_names(wrapped))
    wrapped.requires_grad_(True)  # everything trainable by hand: the stage must freeze the base again
    assert model.set_training_stage("instruct") == through_wrapper[0]
    assert set(trainable_parameter_names(wrapped)) == through_wrapper[1]


def test_a_stage_component_without_adapter_or_copy_is_refused(case):
    model, wrapped, _, prefixes = _adapted(case)
    covered = _covered(model, wrapped, prefixes)
    stage, components = next((s, c) for s, c in model.config.training_stages.items() if not set(c) <= covered)
    bare = [c for c in components if c not in covered]
    before = set(trainable_parameter_names(wrapped))
    with pytest.raises(ValueError, match=rf"training stage '{stage}' trains \[{', '.join(repr(c) for c in bare)}\], "
                                         r"which have no peft adapter and no modules_to_save copy"):
        set_training_stage(wrapped, stage)
    assert set(trainable_parameter_names(wrapped)) == before  # refused before anything changed


def test_a_lora_step_after_the_stage_changes_no_base_weight(case):
    model, wrapped, processor, prefixes = _adapted(case)
    set_training_stage(wrapped, "instruct")
    base = {n: p.detach().clone() for n, p in wrapped.named_parameters() if not _is_adapter(n)}
    batch, _, _ = two_prompt_batch(processor)
    batch, labels = batch_with_labels(model, batch)
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    wrapped.train()
    wrapped(**batch, labels=labels).loss.backward()
    optimizer.step()
    changed = [n for n, p in wrapped.named_parameters() if n in base and not torch.equal(p, base[n])]
    assert changed == []


# ----- the collator and the model's kind of language model -----------------------------------------------------------
def _examples() -> list[dict]:
    return [
        {"messages": [
            {"role": "user", "content": [{"type": "image", "image": make_image(40, 30, seed=i)},
                                         {"type": "text", "text": "What color is it?"}]},
            {"role": "assistant", "content": answer},
        ]}
        for i, answer in enumerate(["It is red.", "Blue, mostly."])
    ]  # fmt: skip


def test_the_collator_takes_the_layout_from_the_model(case):
    model, processor = build(case)
    kind = model.config.is_encoder_decoder
    from_model = VLMDataCollator(processor, model=model)(_examples())
    told = VLMDataCollator(processor, encoder_decoder=kind)(_examples())
    assert from_model.keys() == told.keys()
    assert all(torch.equal(from_model[k], told[k]) for k in told)
    assert torch.isfinite(model(**from_model).loss)
    wrapped = peft.get_peft_model(model, lora_config(model, r=2))
    assert VLMDataCollator(processor, model=wrapped).encoder_decoder is kind


def test_the_collator_refuses_a_kind_that_disagrees_with_the_model(case):
    model, processor = build(case)
    kind = model.config.is_encoder_decoder
    with pytest.raises(ValueError, match=rf"encoder_decoder={not kind} disagrees with the model"):
        VLMDataCollator(processor, model=model, encoder_decoder=not kind)


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        ({"model": "a model"}, TypeError, r"takes the model the batches are for .* got str"),
        ({"encoder_decoder": "yes"}, TypeError, r"encoder_decoder must be True, False or None, got 'yes'"),
        ({"max_length": 0}, ValueError, r"max_length must be a positive number of tokens or None, got 0"),
    ],
    ids=["model-not-a-model", "kind-as-string", "max-length-zero"],
)
def test_the_collator_refuses_bad_options(case, options, error, fragment):
    _, processor = build(case)
    with pytest.raises(error, match=fragment):
        VLMDataCollator(processor, **options)


def test_a_decoder_only_batch_given_to_an_encoder_decoder_is_refused(case):
    model, processor = build(case)
    batch = VLMDataCollator(processor, encoder_decoder=False)(_examples())
    if not model.config.is_encoder_decoder:
        assert torch.isfinite(model(**batch).loss)  # the right layout for a decoder-only LM
        return
    with pytest.raises(ValueError, match=r"labels are laid out for a decoder-only language model .*"
                                         r"vlmzoo\.training\.VLMDataCollator\(processor, model=model\)"):
        model(**batch)


# ----- a batch with nothing to learn ---------------------------------------------------------------------------------
def _reference_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the targets that are not -100."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    learned = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * learned).sum() / learned.sum()


def test_a_batch_with_every_label_ignored_gives_zero_loss_and_zero_gradients(case):
    model, processor = build(case)
    model.set_training_stage("full")
    batch, labels = batch_with_labels(model, two_prompt_batch(processor)[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for counted in (None, torch.tensor(0)):  # the batch's own count, and the Trainer's count of an empty step
        extra = {} if counted is None else {"num_items_in_batch": counted}
        loss = model(**batch, labels=torch.full_like(labels, -100), **extra).loss
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        assert gradients and all(torch.count_nonzero(g) == 0 for g in gradients)
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the step is not poisoned


def test_the_loss_is_still_the_mean_over_the_learned_tokens(case):
    model, processor = build(case)
    batch, labels = batch_with_labels(model, two_prompt_batch(processor)[0])
    labels[:, : labels.shape[1] // 2] = -100  # half of each row learned
    with torch.no_grad():
        output = model(**batch, labels=labels)
        summed = model(**batch, labels=labels, num_items_in_batch=torch.tensor(3)).loss
    targets = next_token_targets(model, labels)
    reference = _reference_loss(output.logits, targets)
    torch.testing.assert_close(output.loss.double(), reference, rtol=1e-5, atol=1e-6)
    learned = int((targets != -100).sum())
    torch.testing.assert_close(summed.double(), reference * learned / 3, rtol=1e-5, atol=1e-6)
