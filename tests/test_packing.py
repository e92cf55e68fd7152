"""Padding-free (packed) batches: the collator's layout, the M-RoPE form, the refusals (docs/training.md).

The common suite (``test_common.py``) proves for every decoder-only family that a packed batch gives the padded
batch's loss and gradients and that its samples do not see each other. Here: the layout the collator makes (labels
at the boundaries, positions, no padding, per-image inputs kept), the packed (4, 1, total) M-RoPE positions through
the in-test M-RoPE family (``test_skeleton_hooks.HookFamily*``, checked against that file's own reference loop), its
compile-safety, and every setting that cannot keep the samples apart, refused.
"""

from __future__ import annotations


import copy

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from vlmzoo.modeling.rope import mrope_decode_positions
from vlmzoo.training import IGNORE_INDEX, VLMDataCollator, pack_batch

from _synthetic import make_conversations
from helpers import TINY_CASES, build, case_id
from vlmzoo import presets
from test_skeleton_hooks import IMAGE, VIDEO, HookFamilyModel, build as build_hook_family, inputs, mrope_positions


DECODER_ONLY_CASES = [case for case in TINY_CASES if not presets.get_config(*case).is_encoder_decoder]
ENCODER_DECODER_CASES = [case for case in TINY_CASES if presets.get_config(*case).is_encoder_decoder]
decoder_only = pytest.mark.parametrize("case", DECODER_ONLY_CASES, ids=case_id)


# ----- the collator's layout --------------------------------------------------------------------------------------
def test_the_packed_layout_is_the_padded_batch_without_its_padding(case):
    model, processor = build(case)
    if model.config.is_encoder_decoder:
        with pytest.raises(ValueError, match="encoder-decoder language model"):
            VLMDataCollator(processor, model=model, packing=True)
        return
    examples = make_conversations(3, seed=2)
    padded = VLMDataCollator(processor, model=model)(examples)
    packed = VLMDataCollator(processor, model=model, packing=True)(examples)
    rows = [row[mask.bool()] for row, mask in zip(padded["input_ids"], padded["attention_mask"])]
    label_rows = [row[mask.bool()] for row, mask in zip(padded["labels"], padded["attention_mask"])]
    assert "attention_mask" not in packed
    torch.testing.assert_close(packed["input_ids"], torch.cat(rows)[None], rtol=0, atol=0)
    # positions restart at 0 at each sample's first token
    expected_positions = torch.cat([torch.arange(len(row)) for row in rows])[None]
    positions = packed["position_ids"]
    if positions.dim() == 3:  # several streams (M-RoPE): the text row, then each sample's own streams, unpadded
        torch.testing.assert_close(positions[0], expected_positions, rtol=0, atol=0)
        family_inputs = {k: v for k, v in padded.items() if k in model.model.family_input_names}
        streams = model.model.packing_position_ids(padded["input_ids"], padded["attention_mask"], **family_inputs)
        mask = padded["attention_mask"].bool()
        expected_streams = torch.cat([streams[:, row, mask[row]] for row in range(len(rows))], dim=-1)[:, None]
        torch.testing.assert_close(positions[1:], expected_streams, rtol=0, atol=0)
    else:
        torch.testing.assert_close(positions, expected_positions, rtol=0, atol=0)
    # labels: the padded rows' labels, with each sample's first token -100 (never learned from the previous sample)
    expected_labels = torch.cat([torch.cat([torch.tensor([IGNORE_INDEX]), row[1:]]) for row in label_rows])[None]
    torch.testing.assert_close(packed["labels"], expected_labels, rtol=0, atol=0)
    starts = torch.tensor([0, *torch.tensor([len(r) for r in rows]).cumsum(0)[:-1].tolist()])
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"] != IGNORE_INDEX).sum())
    # pixels and per-image inputs (InstructBLIP's qformer_input_ids: one row per image) stay as they are
    token_shape = padded["input_ids"].shape
    for name, value in padded.items():
        if name in ("input_ids", "attention_mask", "labels"):
            continue
        if value.shape == token_shape:  # per-token inputs (mm_token_type_ids) are packed with the tokens
            value = value[padded["attention_mask"].bool()][None]
        torch.testing.assert_close(packed[name], value, rtol=0, atol=0, msg=name)


def test_a_boundary_label_is_ignored_even_when_the_next_sample_starts_with_a_learned_token():
    """pack_batch itself (any collator's right-padded batch): a learned first label of a sample becomes -100."""
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "labels": torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]]),
        "pixel_values": torch.ones(2, 3, 4, 4),
    }
    packed = pack_batch(batch)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["pixel_values"] is batch["pixel_values"]


@pytest.mark.parametrize("bad, fragment", [
    ({"attention_mask": None}, "needs the \\(batch, length\\) attention_mask"),
    ({"attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])}, "padded on the right"),
    ({"attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])}, "each with tokens"),
])  # fmt: skip
def test_pack_batch_refuses_what_it_cannot_unpad(bad, fragment):
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.ones(2, 3, dtype=torch.long), **bad}
    with pytest.raises(ValueError, match=fragment):
        pack_batch(batch)


def test_the_collator_refuses_packing_without_a_model(case):
    _, processor = build(case)
    with pytest.raises(ValueError, match="packing=True needs the model"):
        VLMDataCollator(processor, packing=True)
    with pytest.raises(TypeError, match="packing must be True or False"):
        VLMDataCollator(processor, packing="yes")


@pytest.mark.parametrize("case", ENCODER_DECODER_CASES, ids=case_id)
def test_an_encoder_decoder_model_refuses_packed_positions(case):
    model, processor = build(case)
    packed = pack_batch(VLMDataCollator(processor, encoder_decoder=False)(make_conversations(2)))
    packed.pop("labels")  # (laid out for a decoder-only LM, refused first: test_bad_inputs_training.py)
    with pytest.raises(ValueError, match="Packed \\(padding-free\\) batches are refused for such LMs"):
        model(**packed)


# ----- settings that cannot keep the samples apart are refused ------------------------------------------------------
AttentionInterface.register("vlmzoo_test_unmasked", sdpa_attention_forward)  # an attention without a mask function


def _packed(case):
    model, processor = build(case)
    return model, VLMDataCollator(processor, model=model, packing=True)(make_conversations(3, seed=4))


@decoder_only
def test_an_attention_without_a_mask_function_refuses_a_packed_batch(case):
    model, packed = _packed(case)
    model.language_model.config._attn_implementation = "vlmzoo_test_unmasked"
    with pytest.raises(ValueError, match="'vlmzoo_test_unmasked' has no mask function, so it cannot keep the samples"):
        model(**packed)


@decoder_only
def test_a_packed_batch_refuses_to_fill_a_cache(case):
    model, packed = _packed(case)
    with pytest.raises(ValueError, match="use_cache=True with a packed"):
        model(**packed, use_cache=True)


@decoder_only
def test_sliding_windows_shorter_than_a_sample_are_refused_and_longer_ones_pack(case):
    """A decoder whose config declares a sliding window: a block mask equals the windowed one only when no sample is
    longer than the window."""
    model, packed = _packed(case)
    text_positions = packed["position_ids"][0] if packed["position_ids"].dim() == 3 else packed["position_ids"]
    longest = int(text_positions.max()) + 1
    config = model.language_model.config
    if hasattr(config, "use_sliding_window"):  # Qwen2 declares its window in use only with this flag
        config.use_sliding_window = True
    config.sliding_window = longest - 1
    with pytest.raises(ValueError, match=f"a packed sample has {longest} tokens, more than the language model's slid"):
        model(**packed)
    config.sliding_window = longest
    with torch.no_grad():
        assert torch.isfinite(model(**packed).loss)
    config.sliding_window = None
    config.layer_types = ["chunked_attention"] * len(getattr(config, "layer_types", None) or [None] * 2)
    with pytest.raises(ValueError, match=r"has \['chunked_attention'\] layers"):
        model(**packed)


def _varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """A stand-in for a flash varlen kernel on CPU: causal attention inside each [cu_seq_lens[i], cu_seq_lens[i+1])
    segment of the flattened row, only from transformers' varlen kwargs (it fails without them)."""
    cu_q, cu_k = kwargs["cu_seq_lens_q"].tolist(), kwargs["cu_seq_lens_k"].tolist()
    assert cu_q == cu_k and attention_mask is None and query.shape[0] == 1
    assert kwargs["max_length_q"] == max(e - s for s, e in zip(cu_q, cu_q[1:]))
    outputs = [
        nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        for s, e in zip(cu_q, cu_q[1:])
    ]  # fmt: skip
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None  # (B, H, L, D) -> (B, L, H, D)


AttentionInterface.register("vlmzoo_test_flash_varlen", _varlen_attention)


@decoder_only
def test_flash_attention_gets_the_varlen_kwargs_and_keeps_the_samples_apart(case):
    """On a flash attention (any implementation named *flash*) the skeleton builds no mask: every attention layer of
    the language model gets transformers' varlen kwargs (cu_seq_lens over the samples, their longest length). A CPU
    stand-in for the varlen kernel, reading only those, gives the padded batch's logits (on sdpa) at every token."""
    model, processor = build(case)
    examples = make_conversations(3, seed=4)
    padded = VLMDataCollator(processor, model=model)(examples)
    packed = VLMDataCollator(processor, model=model, packing=True)(examples)
    with torch.no_grad():
        expected = model(**padded).logits[padded["attention_mask"].bool()]
        model.language_model.config._attn_implementation = "vlmzoo_test_flash_varlen"
        logits = model(**packed).logits[0]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@decoder_only
def test_one_sequence_per_row_without_a_mask_is_not_treated_as_packed(case):
    """Positions without restarts (and no mask, no cache): an ordinary call, the cache still filled when asked."""
    model, packed = _packed(case)
    ids = packed["input_ids"][:, :20]
    text_only = {"input_ids": ids, "position_ids": torch.arange(20)[None]}
    with torch.no_grad():
        output = model(**text_only, use_cache=True)
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    assert output.cache is not None and output.cache.get_seq_length() == 20
    torch.testing.assert_close(output.logits, reference.logits, rtol=1e-5, atol=1e-5)


# ----- M-RoPE: packed (4, 1, total) positions through the in-test M-RoPE family -------------------------------------
def _mrope_batches():
    rows = [inputs(frames=2, text=(5, 6, 7)), inputs(frames=2, text=(5,)), inputs(frames=2, text=(8, 9, 5, 6, 7, 8))]
    width = max(row["input_ids"].shape[1] for row in rows)
    pad = lambda t: nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    ids = torch.cat([pad(row["input_ids"]) for row in rows])
    mask = torch.cat([pad(row["attention_mask"]) for row in rows])
    generator = torch.Generator().manual_seed(5)
    padded = {
        "input_ids": ids, "attention_mask": mask,
        "labels": ids.masked_fill((ids == IMAGE) | (ids == VIDEO) | (mask == 0), IGNORE_INDEX),
        "pixel_values": torch.randn(3, *rows[0]["pixel_values"].shape[1:], generator=generator),
        "pixel_values_videos": torch.randn(3, *rows[0]["pixel_values_videos"].shape[1:], generator=generator),
    }  # fmt: skip
    model = build_hook_family()
    packed = pack_batch(padded, model.model.packing_position_ids)
    return model, padded, packed, [row["input_ids"][0] for row in rows]


def test_packed_mrope_positions_restart_per_sample_with_their_three_streams():
    _, _, packed, samples = _mrope_batches()
    positions = packed["position_ids"]
    total = sum(len(s) for s in samples)
    assert positions.shape == (4, 1, total) and packed["input_ids"].shape == (1, total)
    torch.testing.assert_close(positions[0, 0], torch.cat([torch.arange(len(s)) for s in samples]), rtol=0, atol=0)
    # rows 1..3: each sample's M-RoPE streams, from the test's own reference loop
    torch.testing.assert_close(positions[1:, 0], torch.cat([mrope_positions(s) for s in samples], dim=1), rtol=0,
                               atol=0)  # fmt: skip


def test_a_packed_mrope_batch_gives_the_padded_batch_loss_and_gradients():
    model, padded, packed, _ = _mrope_batches()
    model.requires_grad_(True)

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded_loss, padded_grads = loss_and_grads(padded)
    packed_loss, packed_grads = loss_and_grads(packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-5)
    assert set(packed_grads) == set(padded_grads) and padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_the_packed_mrope_streams_reach_the_rotary_module_and_the_decoder_reads_the_text_row():
    model, _, packed, samples = _mrope_batches()
    rotary, decoder = model.language_model.rotary_emb, model.language_model
    seen = {}
    decoder.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(layer=kwargs["position_ids"]), with_kwargs=True
    )
    rotary.rotary.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(rotary=args[1]), with_kwargs=True
    )
    with torch.no_grad():
        model(**packed)
    torch.testing.assert_close(seen["layer"], packed["position_ids"][0], rtol=0, atol=0)
    # the wrapped module sees the three streams at once: (3 * B, L)
    torch.testing.assert_close(seen["rotary"], packed["position_ids"][1:].reshape(3, -1), rtol=0, atol=0)
    assert rotary._packed_streams is None  # used once, not kept


def test_packed_mrope_samples_do_not_see_each_other():
    model, _, packed, samples = _mrope_batches()
    first = len(samples[0])
    changed_ids = packed["input_ids"].clone()
    where = int((samples[0] == 6).nonzero()[0, 0])  # a text token of sample 0, before its video
    changed_ids[0, where] = 11
    changed_video = packed["pixel_values_videos"].clone()
    changed_video[0] += 1.0
    with torch.no_grad():
        logits = model(**packed).logits
        changed = model(**{**packed, "input_ids": changed_ids, "pixel_values_videos": changed_video}).logits
    assert not torch.allclose(changed[0, :first], logits[0, :first], atol=1e-3)
    torch.testing.assert_close(changed[0, first:], logits[0, first:], rtol=0, atol=1e-6)


def test_a_packed_mrope_forward_compiles_with_fullgraph():
    model, _, packed, _ = _mrope_batches()
    inputs_only = {k: v for k, v in packed.items() if k != "labels"}
    with torch.no_grad():
        eager = model(**inputs_only).logits
        torch._dynamo.reset()
        compiled = torch.compile(model.language_model, fullgraph=True, backend="eager")
        embeds = model.get_input_embeddings()(inputs_only["input_ids"].clamp(max=100))
        # the decoder called directly with the packed row (no mask, use_cache left to the config): the pre-hook gives
        # it the text row and no cache, so transformers' mask creation finds the samples itself
        direct = model.language_model(inputs_embeds=embeds, position_ids=inputs_only["position_ids"]).last_hidden_state
        traced = compiled(inputs_embeds=embeds, position_ids=inputs_only["position_ids"]).last_hidden_state
        torch._dynamo.reset()
        whole = torch.compile(model.forward, fullgraph=True, backend="eager")(**inputs_only).logits
    torch.testing.assert_close(traced, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, eager, rtol=1e-5, atol=1e-5)
    # and the direct call keeps the samples apart: the second sample's states do not depend on the first's tokens
    first = int((inputs_only["position_ids"][0, 0] == 0).nonzero()[1])
    changed = embeds.clone()
    changed[0, :first] += 1.0
    with torch.no_grad():
        moved = model.language_model(inputs_embeds=changed, position_ids=inputs_only["position_ids"]).last_hidden_state
    torch.testing.assert_close(moved[0, first:], direct[0, first:], rtol=0, atol=1e-6)
    assert not torch.allclose(moved[0, :first], direct[0, :first], atol=1e-3)


def test_a_family_with_its_own_positions_but_no_packing_hook_is_refused():
    from vlmzoo.modeling.modeling_base import ZooVLMModel

    model = build_hook_family()
    # the in-test M-RoPE family without its packing_position_ids override: the skeleton's default again
    without_hook = {"packing_position_ids": ZooVLMModel.packing_position_ids}
    model.model.__class__ = type("NoHookModel", (HookFamilyModel,), without_hook)
    processor = build(("llava", "tiny"))[1]
    with pytest.raises(ValueError, match="computes its own positions .* but has no packing_position_ids hook"):
        VLMDataCollator(processor, model=model, packing=True)
    with pytest.raises(NotImplementedError, match="does not implement packing_position_ids"):
        model.model.packing_position_ids(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_an_mrope_decode_step_still_compiles_with_fullgraph_on_a_static_cache():
    """The language model's pre-hook (packed streams, masks) stays compile-safe on the decode path too."""
    from transformers import StaticCache

    model = build_hook_family()
    batch = inputs()
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        cache = StaticCache(config=model.config, max_cache_len=length + 4)
        prefill = model(**batch, cache=cache, use_cache=True)
        token = prefill.logits[:, -1:].argmax(-1)
        mask = torch.cat([batch["attention_mask"], torch.ones(1, 4, dtype=torch.long)], dim=1)
        # the decode positions given (the in-test family's own hook branches on the cache length: not traceable)
        positions = mrope_decode_positions(model.model.rope_deltas, length, 1)
        step = {"input_ids": token, "attention_mask": mask, "cache": cache, "position_ids": positions}
        eager = model(**{**step, "cache": copy.deepcopy(cache)}).logits
        torch._dynamo.reset()
        compiled = torch.compile(model.forward, fullgraph=True, backend="eager")(**step).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
