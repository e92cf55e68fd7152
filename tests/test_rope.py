"""M-RoPE (``vlmzoo.modeling.rope``): the section rotary, the (3, B, L) position index, decoders with it swapped in.

References are independent of the code under test: loops over frequencies and tokens written here, and
transformers' own Qwen2-VL classes (``Qwen2VLRotaryEmbedding``, ``Qwen2VLModel.get_rope_index``).
"""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLModel,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.models.qwen2_vl import modeling_qwen2_vl

from vlmzoo.modeling.rope import (
    MultimodalRotaryEmbedding,
    mrope_decode_positions,
    mrope_position_index,
    swap_in_mrope,
)

IMAGE, VIDEO, PAD = 90, 91, 0
SECTIONS = (2, 3, 3)  # head_dim 16: 8 frequencies
THETA = 10000.0
TINY = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=97, max_position_embeddings=256, pad_token_id=PAD)  # fmt: skip
LM_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}


def lm_config(kind: str, **overrides):
    return LM_CONFIGS[kind](**{**TINY, **overrides})


def plain_and_mrope(kind: str, head: bool = False):
    """A tiny decoder and a copy with M-RoPE swapped in (same weights)."""
    torch.manual_seed(0)
    builder = AutoModelForCausalLM if head else AutoModel
    plain = builder.from_config(lm_config(kind)).eval()
    mrope = copy.deepcopy(plain)
    swap_in_mrope(mrope, SECTIONS)
    return plain, mrope


# ----- the independent references ---------------------------------------------------------------------


def loop_tables(inv_freq, scaling, positions, sections):
    """(cos, sin) of (3, B, L) positions, one frequency at a time: channel c uses frequency c mod D/2, whose
    section names the stream it reads."""
    half = inv_freq.numel()
    stream_of = [stream for stream, width in enumerate(sections) for _ in range(width)]
    cos = torch.empty(*positions.shape[1:], 2 * half)
    sin = torch.empty_like(cos)
    for channel in range(2 * half):
        frequency = channel % half
        angle = positions[stream_of[frequency]].float() * inv_freq[frequency]
        cos[..., channel] = angle.cos() * scaling
        sin[..., channel] = angle.sin() * scaling
    return cos, sin


def loop_index(ids, mask, image_grids, video_grids, merge, temporal_advance=True):
    """(3, B, L) positions and (B, 1) deltas, the plain loop: text (p, p, p); a block of t x h x w merged
    patches at p gets (p + frame, p + row, p + column); the text after it starts at the block's largest
    position + 1 (or at p + max(h, w) without temporal advance); padding 0."""
    batch, length = ids.shape
    positions = torch.zeros(3, batch, length, dtype=torch.long)
    grids = {IMAGE: iter(image_grids.tolist()), VIDEO: iter(video_grids.tolist())}
    deltas = []
    for b in range(batch):
        kept = [i for i in range(length) if mask[b, i]]
        out, p, k = [], 0, 0
        while k < len(kept):
            token = int(ids[b, kept[k]])
            if token in grids:
                t, h, w = next(grids[token])
                h, w = h // merge, w // merge
                block = [(p + f, p + r, p + c) for f in range(t) for r in range(h) for c in range(w)]
                out += block
                k += len(block)
                p = max(max(x) for x in block) + 1 if temporal_advance else p + max(h, w)
            else:
                out.append((p, p, p))
                p, k = p + 1, k + 1
        for j, i in enumerate(kept):
            positions[:, b, i] = torch.tensor(out[j])
        deltas.append(max(max(x) for x in out) + 1 - len(kept))
    return positions, torch.tensor(deltas).view(batch, 1)


def random_prompts(seed, merge=2, rows=3, bound_frames=True):
    """Left-padded rows of text, images and videos of odd merged sizes; every block is followed by text (so each
    run of placeholders is one block, as transformers' grouping reads it). ``bound_frames``: no video has more
    merged frames than rows and columns."""
    g = random.Random(seed)
    sequences, image_grids, video_grids = [], [], []
    for _ in range(rows):
        tokens = [g.randint(1, 80) for _ in range(g.randint(0, 2))]
        for _ in range(g.randint(0, 3)):
            kind = g.choice((IMAGE, VIDEO))
            h, w = g.choice((1, 2, 3)), g.choice((1, 3, 2))
            # videos: t <= max(h, w), or (bound_frames=False) more frames than rows and columns
            t = 1 if kind == IMAGE else g.randint(1, max(h, w)) if bound_frames else g.randint(max(h, w) + 1, 4)
            (image_grids if kind == IMAGE else video_grids).append((t, h * merge, w * merge))
            tokens += [kind] * (t * h * w)
            tokens += [g.randint(1, 80) for _ in range(g.randint(1, 3))]
        sequences.append(tokens or [g.randint(1, 80)])
    length = max(map(len, sequences))
    ids = torch.tensor([[PAD] * (length - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences])
    grids = (torch.tensor(image_grids, dtype=torch.long), torch.tensor(video_grids, dtype=torch.long))
    return ids, mask, *(grid.view(-1, 3) for grid in grids)


@functools.cache
def reference_qwen2_vl(merge: int) -> Qwen2VLModel:
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=97, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": THETA, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, spatial_merge_size=merge),
        image_token_id=IMAGE, video_token_id=VIDEO,
    )  # fmt: skip
    return Qwen2VLModel(config).eval()


def transformers_index(ids, mask, image_grids, video_grids, merge):
    token_types = (ids == IMAGE).int() + 2 * (ids == VIDEO).int()  # what the processor gives as mm_token_type_ids
    return reference_qwen2_vl(merge).get_rope_index(
        ids, token_types, image_grid_thw=image_grids if image_grids.numel() else None,
        video_grid_thw=video_grids if video_grids.numel() else None, attention_mask=mask,
    )  # fmt: skip


def ours(ids, mask, image_grids, video_grids, merge, **kwargs):
    return mrope_position_index(ids, mask, IMAGE, VIDEO, image_grids, video_grids, merge, **kwargs)


# ----- the rotary module ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LM_CONFIGS)
def test_the_rotary_matches_a_loop_over_frequencies(kind):
    _, model = plain_and_mrope(kind)
    rotary = model.rotary_emb
    assert isinstance(rotary, MultimodalRotaryEmbedding)
    positions = torch.randint(0, 60, (3, 2, 7))
    cos, sin = rotary(torch.zeros(2, 7, 64), positions)
    ref_cos, ref_sin = loop_tables(rotary.rotary.inv_freq, rotary.rotary.attention_scaling, positions, SECTIONS)
    assert cos.shape == sin.shape == (2, 7, 16)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6)


def test_the_rotary_keeps_the_wrapped_scaling():
    """A scaled rope (YaRN: other frequencies and an attention factor) is recombined the same way."""
    config = lm_config("llama", rope_parameters={"rope_type": "yarn", "rope_theta": THETA, "factor": 4.0,
                                                 "original_max_position_embeddings": 64})  # fmt: skip
    model = AutoModel.from_config(config)
    wrapped = model.rotary_emb
    assert wrapped.attention_scaling != 1.0
    rotary = swap_in_mrope(model, (4, 2, 2))
    positions = torch.randint(0, 200, (3, 1, 9))
    cos, sin = rotary(torch.zeros(1, 9, 64), positions)
    ref_cos, ref_sin = loop_tables(wrapped.inv_freq, wrapped.attention_scaling, positions, (4, 2, 2))
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", LM_CONFIGS)
def test_two_d_positions_and_equal_streams_give_the_wrapped_output(kind):
    _, model = plain_and_mrope(kind)
    rotary = model.rotary_emb
    x, positions = torch.zeros(2, 5, 64), torch.randint(0, 60, (2, 5))
    plain = rotary.rotary(x, positions)
    for got in (rotary(x, positions), rotary(x, positions.expand(3, -1, -1))):
        for table, expected in zip(got, plain):
            assert torch.equal(table, expected)


def test_rotated_queries_and_keys_match_transformers_qwen2_vl():
    text_config = Qwen2VLConfig(
        text_config=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": THETA, "mrope_section": list(SECTIONS)})
    ).text_config  # fmt: skip
    reference = modeling_qwen2_vl.Qwen2VLRotaryEmbedding(text_config)
    rotary = swap_in_mrope(AutoModel.from_config(lm_config("qwen2", rope_parameters={"rope_type": "default",
                                                                                     "rope_theta": THETA})),
                           SECTIONS)  # fmt: skip
    ids, mask, image_grids, video_grids = random_prompts(seed=4)
    positions, _ = ours(ids, mask, image_grids, video_grids, merge=2)
    assert not torch.equal(positions[0], positions[1])  # the streams differ somewhere
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(ids.shape[0], 4, ids.shape[1], 16, generator=generator)  # (B, heads, L, head_dim)
    k = torch.randn(ids.shape[0], 2, ids.shape[1], 16, generator=generator)
    x = torch.zeros(*ids.shape, 64)
    ref_q, ref_k = modeling_qwen2_vl.apply_rotary_pos_emb(q, k, *reference(x, positions))
    got_q, got_k = apply_rotary_pos_emb(q, k, *rotary(x, positions))
    torch.testing.assert_close(got_q, ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_k, ref_k, rtol=0, atol=1e-6)


# ----- the position index -----------------------------------------------------------------------------


@pytest.mark.parametrize("merge", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_the_index_matches_the_loop_and_transformers(seed, merge):
    ids, mask, image_grids, video_grids = random_prompts(seed, merge=merge)
    assert (mask == 0).any()  # left padding is exercised
    positions, deltas = ours(ids, mask, image_grids, video_grids, merge)
    loop_positions, loop_deltas = loop_index(ids, mask, image_grids, video_grids, merge)
    assert torch.equal(positions, loop_positions) and torch.equal(deltas, loop_deltas)
    if image_grids.numel() or video_grids.numel():  # transformers needs at least one grid
        ref_positions, ref_deltas = transformers_index(ids, mask, image_grids, video_grids, merge)
        assert torch.equal(positions, ref_positions)
        assert torch.equal(deltas, ref_deltas)


@pytest.mark.parametrize("seed", range(4))
def test_long_videos_follow_the_paper_or_transformers(seed):
    """Videos with more merged frames than rows and columns: the text after them starts after the block's largest
    position (the paper) by default, at p + max(h, w) with temporal_advance=False (transformers 5.24)."""
    ids, mask, image_grids, video_grids = random_prompts(100 + seed, rows=4, bound_frames=False)
    merged = video_grids // torch.tensor([1, 2, 2])
    assert (merged[:, 0] > merged[:, 1:].amax(-1)).any()  # at least one such video
    positions, deltas = ours(ids, mask, image_grids, video_grids, 2)
    assert torch.equal(positions, loop_index(ids, mask, image_grids, video_grids, 2)[0])
    spatial_positions, spatial_deltas = ours(ids, mask, image_grids, video_grids, 2, temporal_advance=False)
    loop_positions, loop_deltas = loop_index(ids, mask, image_grids, video_grids, 2, temporal_advance=False)
    ref_positions, ref_deltas = transformers_index(ids, mask, image_grids, video_grids, 2)
    assert torch.equal(spatial_positions, loop_positions) and torch.equal(spatial_positions, ref_positions)
    assert torch.equal(spatial_deltas, loop_deltas) and torch.equal(spatial_deltas, ref_deltas)
    assert not torch.equal(positions, spatial_positions)


def test_text_only_and_adjacent_blocks():
    ids = torch.tensor([[5, 6, 7, 8]])
    positions, deltas = mrope_position_index(ids, None, IMAGE, VIDEO)
    assert torch.equal(positions, torch.arange(4).expand(3, 1, 4)) and deltas.tolist() == [[0]]
    # two images back to back (no text between): two blocks by the grids' counts, the second after the first
    ids = torch.tensor([[5, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, 6]])
    grids = torch.tensor([[1, 1, 4], [1, 1, 1]])
    positions, deltas = mrope_position_index(ids, None, IMAGE, None, grids)
    assert positions.tolist() == [[[0, 1, 1, 1, 1, 5, 6]], [[0, 1, 1, 1, 1, 5, 6]], [[0, 1, 2, 3, 4, 5, 6]]]
    assert deltas.tolist() == [[0]]


def test_decode_positions_continue_from_rope_deltas():
    ids, mask, image_grids, video_grids = random_prompts(seed=2)
    positions, deltas = ours(ids, mask, image_grids, video_grids, 2)
    past = ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(ids.shape[0], 2, dtype=mask.dtype)], dim=1)
    steps = mrope_decode_positions(deltas, past, 2, full_mask)
    assert steps.shape == (3, ids.shape[0], 2)
    for b in range(ids.shape[0]):  # one past the row's largest position, then +1
        top = int(positions[:, b].max())
        assert steps[:, b].tolist() == [[top + 1, top + 2]] * 3
    unpadded = mrope_decode_positions(deltas[:1], int(mask[0].sum()), 1)  # row 0 without its padding
    assert unpadded[:, 0, 0].tolist() == [int(positions[:, 0].max()) + 1] * 3


# ----- decoders with M-RoPE swapped in ----------------------------------------------------------------


def prompt_batch(seed=1):
    ids, mask, image_grids, video_grids = random_prompts(seed)
    positions, deltas = ours(ids, mask, image_grids, video_grids, 2)
    return ids, mask, positions, deltas


@pytest.mark.parametrize("kind", LM_CONFIGS)
def test_equal_streams_give_the_plain_models_logits_and_distinct_ones_do_not(kind):
    plain, mrope = plain_and_mrope(kind, head=True)
    ids, mask, positions, _ = prompt_batch()
    text_positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask, position_ids=text_positions).logits
        same = mrope(ids, attention_mask=mask, position_ids=text_positions.expand(3, -1, -1)).logits
        two_d = mrope(ids, attention_mask=mask, position_ids=text_positions).logits
        streams = mrope(ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(same, expected) and torch.equal(two_d, expected)
    attended = mask.bool()
    assert (streams - expected)[attended].abs().max() > 1e-5  # the equal-stream logits above are exact


@pytest.mark.parametrize("kind", LM_CONFIGS)
def test_three_streams_without_a_mask_or_cache_build_the_causal_mask(kind):
    """Mask creation reads position_ids when there is no mask and no cache, as (B, L) ones (it raises on (3, B, L),
    even with B == 3, the streams' leading size). The swap's pre-hook gives such a call a 2-D mask."""
    _, mrope = plain_and_mrope(kind, head=True)
    ids = torch.randint(1, 80, (3, 6))
    ids[:, 1:5] = IMAGE
    positions, _ = mrope_position_index(ids, None, IMAGE, None, torch.tensor([[1, 2, 2]] * 3))
    base = mrope.base_model  # the hook sits on the base model: called by the head with keywords, or directly
    with torch.no_grad():
        masked = mrope(ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=False).logits
        unmasked = mrope(ids, position_ids=positions, use_cache=False).logits
        hidden = base(ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=False)
        positional = base(ids, None, positions, use_cache=False)
    assert torch.equal(unmasked, masked)
    assert torch.equal(positional.last_hidden_state, hidden.last_hidden_state)


@pytest.mark.parametrize("kind", LM_CONFIGS)
def test_generation_with_and_without_cache_agree_with_mrope_positions(kind):
    _, model = plain_and_mrope(kind, head=True)
    ids, mask, positions, deltas = prompt_batch(seed=3)
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                    return_dict_in_generate=True, pad_token_id=PAD)  # fmt: skip
    cached = model.generate(ids, attention_mask=mask, position_ids=positions, use_cache=True, **settings)
    uncached = model.generate(ids, attention_mask=mask, position_ids=positions, use_cache=False, **settings)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # a decode loop of our own, positions from rope_deltas, gives the same logits
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, step_mask, logits = out.cache, mask, [out.logits[:, -1]]
        for token in cached.sequences[:, ids.shape[1]:-1].T:
            step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
            steps = mrope_decode_positions(deltas, cache.get_seq_length(), 1, step_mask)
            out = model(token[:, None], attention_mask=step_mask, position_ids=steps, cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits[:, -1])
    for a, b in zip(cached.logits, logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ----- bad input --------------------------------------------------------------------------------------


def test_sections_that_do_not_sum_to_half_the_head_dim_are_refused():
    model = AutoModel.from_config(lm_config("llama"))
    with pytest.raises(ValueError, match=r"mrope_section \[2, 2, 3\] sums to 7, but the rotary module has 8 freq"):
        swap_in_mrope(model, (2, 2, 3))
    with pytest.raises(ValueError, match="must be three non-negative ints"):
        swap_in_mrope(model, (4, 4))
    assert not isinstance(model.rotary_emb, MultimodalRotaryEmbedding)  # nothing swapped


def test_a_model_without_a_rotary_module_is_refused():
    model = AutoModel.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="GPT2Model has no `rotary_emb` module"):
        swap_in_mrope(model, SECTIONS)
    model = AutoModel.from_config(lm_config("llama"))
    swap_in_mrope(model, SECTIONS)
    with pytest.raises(ValueError, match=r"already has M-RoPE \(mrope_section=\[2, 3, 3\]\)"):
        swap_in_mrope(model, SECTIONS)
    with pytest.raises(ValueError, match="has no 1-D `inv_freq` buffer"):
        MultimodalRotaryEmbedding(torch.nn.Identity(), SECTIONS)


def test_positions_of_the_wrong_shape_are_refused():
    rotary = swap_in_mrope(AutoModel.from_config(lm_config("llama")), SECTIONS)
    with pytest.raises(ValueError, match=r"got \(5, 1, 5\)"):
        rotary(torch.zeros(1, 5, 64), torch.zeros(5, 1, 5, dtype=torch.long))


def test_packed_positions_rotate_by_their_three_streams():
    """A packed batch's (4, B, L) positions: row 0 the text positions (for masks), rows 1..3 the streams."""
    rotary = swap_in_mrope(AutoModel.from_config(lm_config("llama")), SECTIONS)
    streams = torch.tensor([[[0, 1, 1, 1, 0]], [[0, 1, 1, 2, 0]], [[0, 1, 2, 1, 0]]])  # (3, 1, 5)
    packed = torch.cat([torch.tensor([[[0, 1, 2, 3, 0]]]), streams])  # (4, 1, 5)
    x = torch.zeros(1, 5, 64)
    for got, expected in zip(rotary(x, packed), rotary(x, streams)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_grids_that_disagree_with_the_placeholders_are_refused():
    ids = torch.tensor([[5, IMAGE, IMAGE, IMAGE, IMAGE, 6, VIDEO, VIDEO, 7]])
    with pytest.raises(ValueError, match=r"the text has 4 image tokens but image_grid_thw \[\[1, 4, 6\]\] .* gives 6"):
        mrope_position_index(ids, None, IMAGE, VIDEO, torch.tensor([[1, 4, 6]]), torch.tensor([[2, 2, 2]]), 2)
    with pytest.raises(ValueError, match="the text has 2 video tokens but no video_grid_thw was given"):
        mrope_position_index(ids, None, IMAGE, VIDEO, torch.tensor([[1, 4, 4]]), None, 2)
    with pytest.raises(ValueError, match=r"\[\[1, 3, 4\]\] has rows or columns not divisible by spatial_merge_size 2"):
        mrope_position_index(ids, None, IMAGE, VIDEO, torch.tensor([[1, 3, 4]]), torch.tensor([[2, 2, 2]]), 2)
    # the right total, split across text: image 0 needs 3 consecutive tokens
    split = torch.tensor([[5, IMAGE, IMAGE, 6, IMAGE, 7]])
    with pytest.raises(ValueError, match=r"image 0 \(grid \[1, 1, 3\]\) needs 3 consecutive image tokens in one row, "
                                         r"but its tokens run from row 0 position 1 to row 0 position 4"):  # fmt: skip
        mrope_position_index(split, None, IMAGE, None, torch.tensor([[1, 1, 3]]))
    # padding does not count: the masked placeholder leaves 3 of the 4 the grid needs
    with pytest.raises(ValueError, match="the text has 3 image tokens but image_grid_thw"):
        mrope_position_index(ids, torch.tensor([[1, 0, 1, 1, 1, 1, 1, 1, 1]]), IMAGE, None, torch.tensor([[1, 2, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\) but input_ids have \(1, 9\)"):
        mrope_position_index(ids, torch.ones(1, 3), IMAGE)
    with pytest.raises(ValueError, match=r"rope_deltas must have shape \(batch, 1\), got \(2,\)"):
        mrope_decode_positions(torch.zeros(2, dtype=torch.long), 4, 1)
