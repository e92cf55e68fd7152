"""BLIP-2 stage 1 (``ZooBlip2ForQFormerPretraining``): the paper's masks, the three losses recomputed by hand,
hard-negative sampling, a tiny contrastive training run, and the hand-over of the weights to stage 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlmzoo
from vlmzoo.modeling.modeling_blip2_pretraining import (
    ZooBlip2ForQFormerPretraining,
    qformer_attention_mask,
    sample_hard_negatives,
)
from vlmzoo.presets import get_config
from vlmzoo.synthetic import ShapeScene, draw_scene

VOCAB = 48
QUERIES = 8  # the tiny preset's num_query_tokens


def tiny_config(width: int = 32):
    config = get_config("blip2", "tiny")
    config.qformer_config.hidden_size, config.qformer_config.intermediate_size = width, 2 * width
    config.qformer_config.vocab_size = VOCAB  # a small Q-Former vocabulary: [DEC] is id 47
    # the stand-in for a pretrained ViT needs real random weights (Blip2VisionConfig initialises at std 1e-10)
    config.vision_config.initializer_range = 0.02
    config.qformer_config.hidden_dropout_prob = config.qformer_config.attention_probs_dropout_prob = 0.0
    return config


def tiny_model(seed: int = 0, width: int = 32) -> ZooBlip2ForQFormerPretraining:
    torch.manual_seed(seed)
    return ZooBlip2ForQFormerPretraining(tiny_config(width))


def random_batch(batch: int = 4, length: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 32, 32, generator=generator)
    ids = torch.randint(2, VOCAB - 1, (batch, length), generator=generator)
    ids[:, 0] = 1  # [CLS]
    mask = torch.ones_like(ids)
    mask[0, length - 2 :] = 0  # the first text is padded
    ids[0, length - 2 :] = 0
    return pixels, ids, mask


def record_qformer_calls(model):
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs)

    return calls, model.qformer.register_forward_pre_hook(hook, with_kwargs=True)


# ----- masks -----------------------------------------------------------------------------------------
def test_itg_mask_is_multimodal_causal():
    text_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    allowed = qformer_attention_mask(text_mask, num_queries=3, causal_text=True)
    assert allowed.shape == (2, 1, 7, 7)
    for b in range(2):
        for i in range(7):
            for j in range(7):
                key_valid = j < 3 or bool(text_mask[b, j - 3])
                if i < 3:  # a query sees every query and no text
                    expected = j < 3
                else:  # text position i sees all queries and text <= i
                    expected = key_valid and (j < 3 or j <= i)
                assert bool(allowed[b, 0, i, j]) == expected, (b, i, j)


def test_itm_mask_is_bidirectional_and_itc_text_mask_has_no_queries():
    text_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    itm = qformer_attention_mask(text_mask, num_queries=2, causal_text=False)
    keys = torch.cat([torch.ones(2, 2, dtype=torch.long), text_mask], dim=1).bool()
    assert torch.equal(itm[:, 0], keys[:, None, :].expand(2, 5, 5))  # everything sees everything but padding
    itc_text = qformer_attention_mask(text_mask, num_queries=0, causal_text=False)
    assert itc_text.shape == (2, 1, 3, 3)
    assert torch.equal(itc_text[:, 0], text_mask.bool()[:, None, :].expand(2, 3, 3))


def test_forward_gives_the_qformer_each_pass_with_its_mask():
    model = tiny_model().eval()
    pixels, ids, mask = random_batch()
    calls, handle = record_qformer_calls(model)
    out = model(pixels, ids, mask, generator=torch.Generator().manual_seed(0))
    handle.remove()
    image_pass, text_pass, itm_pass, itg_pass = calls
    # ITC image: the queries alone, cross-attending to the ViT
    assert image_pass["query_embeds"].shape == (4, QUERIES, 32) and image_pass["encoder_hidden_states"] is not None
    # ITC text: the text alone, no queries, no cross-attention, bidirectional over the non-padding tokens
    assert text_pass["query_embeds"].shape == (4, 6, 32) and text_pass["query_length"] == 0
    assert text_pass.get("encoder_hidden_states") is None
    assert torch.equal(text_pass["attention_mask"] == 0, qformer_attention_mask(mask, 0, causal_text=False))
    # ITM: B positives + 2B negatives, queries and text together, full attention (padding aside)
    assert itm_pass["query_embeds"].shape == (12, QUERIES + 6, 32) and itm_pass["query_length"] == QUERIES
    mask_all = torch.cat([mask, mask, mask[out.negative_text_ids]])
    assert torch.equal(itm_pass["attention_mask"] == 0, qformer_attention_mask(mask_all, QUERIES, causal_text=False))
    assert (itm_pass["attention_mask"][5:8, 0, :QUERIES, QUERIES:] == 0).all()  # queries see the (unpadded) text
    # ITG: multimodal causal
    itg_allowed = itg_pass["attention_mask"] == 0
    assert torch.equal(itg_allowed, qformer_attention_mask(mask, QUERIES, causal_text=True))
    assert not itg_allowed[:, 0, :QUERIES, QUERIES:].any()


def test_masks_act_inside_the_qformer():
    model = tiny_model().eval()
    pixels, ids, mask = random_batch(batch=2)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        images = model.encode_images(pixels)
        changed = ids.clone()
        changed[:, 4] = (changed[:, 4] + 1) % (VOCAB - 1) + 1
        itg, itg_changed = (model.multimodal_features(images, t, mask, causal_text=True) for t in (ids, changed))
        itm, itm_changed = (model.multimodal_features(images, t, mask, causal_text=False) for t in (ids, changed))
    text_4 = QUERIES + 4
    torch.testing.assert_close(itg[:, :text_4], itg_changed[:, :text_4])  # queries and earlier text: unchanged
    assert (itg[:, text_4:] - itg_changed[:, text_4:]).abs().amax() > 1e-4
    assert (itm[:, :QUERIES] - itm_changed[:, :QUERIES]).abs().amax() > 1e-4  # ITM queries read the text


# ----- losses recomputed from the model's own intermediate outputs ---------------------------------------
def test_itc_loss_from_the_projected_features():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(*random_batch(), generator=torch.Generator().manual_seed(0))
    image, text, temp = out.image_embeds, out.text_embeds, float(out.temperature)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4, QUERIES))
    batch = image.shape[0]
    sim = [[max(float(image[i, q] @ text[t]) for q in range(QUERIES)) for t in range(batch)] for i in range(batch)]
    torch.testing.assert_close(out.sim_i2t, torch.tensor(sim), atol=1e-5, rtol=1e-5)
    i2t = -sum(sim[i][i] / temp - math.log(sum(math.exp(sim[i][t] / temp) for t in range(batch))) for i in range(batch))
    t2i = -sum(sim[t][t] / temp - math.log(sum(math.exp(sim[i][t] / temp) for i in range(batch))) for t in range(batch))
    assert float(out.loss_itc) == pytest.approx((i2t + t2i) / (2 * batch), rel=1e-5)
    assert float(out.loss) == pytest.approx(float(out.loss_itc + out.loss_itm + out.loss_itg), rel=1e-6)


def test_temperature_starts_at_007_and_is_clamped():
    model = tiny_model()
    assert float(model.temp().detach()) == pytest.approx(0.07)
    with torch.no_grad():
        model.temp.weight.fill_(5.0)
    assert float(model.temp().detach()) == pytest.approx(0.5)
    with torch.no_grad():
        model.temp.weight.fill_(-1.0)
    assert float(model.temp().detach()) == pytest.approx(0.001)


def test_itm_logits_and_loss_from_the_sampled_pairs():
    model = tiny_model().eval()
    pixels, ids, mask = random_batch()
    out = model(pixels, ids, mask, generator=torch.Generator().manual_seed(3))
    neg_img, neg_txt = out.negative_image_ids, out.negative_text_ids
    assert not (neg_img == torch.arange(4)).any() and not (neg_txt == torch.arange(4)).any()
    with torch.no_grad():
        images = model.encode_images(pixels)
        pairs = [(i, i) for i in range(4)] + [(int(neg_img[t]), t) for t in range(4)] + [(i, int(neg_txt[i])) for i in range(4)]
        for row, (i, t) in enumerate(pairs):
            fused = model.multimodal_features(images[i : i + 1], ids[t : t + 1], mask[t : t + 1], causal_text=False)
            logits = model.itm_head(fused[0, :QUERIES]).mean(dim=0)
            torch.testing.assert_close(out.itm_logits[row], logits, atol=1e-5, rtol=1e-5)
    assert out.itm_labels.tolist() == [1] * 4 + [0] * 8
    expected = -sum(F.log_softmax(out.itm_logits[r], -1)[int(out.itm_labels[r])] for r in range(12)) / 12
    torch.testing.assert_close(out.loss_itm, expected)


def test_hard_negatives_follow_the_softmax_without_the_positive():
    similarity = torch.tensor([[5.0, 1.0, 2.0, 0.0], [0.5, 9.0, 0.5, 1.5], [3.0, 0.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(similarity, generator) for _ in range(1500)])  # (1500, 4)
    counts = torch.stack([torch.bincount(draws[:, r], minlength=4) for r in range(4)]).float() / 1500
    for r in range(4):
        assert counts[r, r] == 0  # never the positive
        off = [c for c in range(4) if c != r]
        weights = torch.softmax(similarity[r, off], dim=0)
        torch.testing.assert_close(counts[r, off], weights, atol=0.045, rtol=0)  # > 3 sigma
    again = sample_hard_negatives(similarity, torch.Generator().manual_seed(7))
    assert torch.equal(again, sample_hard_negatives(similarity, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="at least 2 image-text pairs"):
        sample_hard_negatives(similarity[:1, :1])


def test_itg_uses_dec_and_shifted_smoothed_labels():
    model = tiny_model().eval()
    pixels, ids, mask = random_batch()
    calls, handle = record_qformer_calls(model)
    with torch.no_grad():
        out = model(pixels, ids, mask, generator=torch.Generator().manual_seed(0), itg_label_smoothing=0.1)
    handle.remove()
    assert model.decoder_token_id == VOCAB - 1
    dec_embedding = model.embeddings.word_embeddings.weight[VOCAB - 1] + model.embeddings.position_embeddings.weight[0]
    torch.testing.assert_close(calls[3]["query_embeds"][:, QUERIES], dec_embedding.expand(4, -1))
    # the LM head is tied to the word embeddings
    hidden = torch.randn(1, 32)
    transformed = model.lm_head.LayerNorm(F.gelu(model.lm_head.dense(hidden)))
    torch.testing.assert_close(model.lm_head(hidden, model.embeddings.word_embeddings.weight),
                               transformed @ model.embeddings.word_embeddings.weight.t() + model.lm_head.bias)
    total, count = 0.0, 0
    for b in range(4):
        for j in range(5):  # position j predicts token j + 1 unless it is padding
            if mask[b, j + 1] == 0:
                continue
            log_probs = F.log_softmax(out.itg_logits[b, j], dim=-1)
            total += float(-0.9 * log_probs[ids[b, j + 1]] - 0.1 * log_probs.mean())
            count += 1
    assert count == 18
    assert float(out.loss_itg) == pytest.approx(total / count, rel=1e-5)


def test_bad_inputs_raise():
    model = tiny_model()
    pixels, ids, mask = random_batch()
    with pytest.raises(ValueError, match="one text per image"):
        model(pixels, ids[:3], mask[:3])
    with pytest.raises(ValueError, match="at least 2 image-text pairs"):
        model(pixels[:1], ids[:1], mask[:1])


# ----- training and the hand-over to stage 2 ---------------------------------------------------------
SHAPE_WORDS = {"circle": 2, "square": 3, "triangle": 4, "cross": 5}
COLOR_WORDS = {"red": 6, "blue": 7}


def shape_caption_set():
    """8 distinct images (4 shapes x 2 colours, each at its own place) with 3-token captions [CLS] colour shape."""
    centers = [(10.0, 10.0), (22.0, 22.0), (22.0, 10.0), (10.0, 22.0)]
    images, captions = [], []
    for index, (shape, shape_id) in enumerate(SHAPE_WORDS.items()):
        for offset, (color, color_id) in enumerate(COLOR_WORDS.items()):
            center = centers[(index + 2 * offset) % 4]
            scene = ShapeScene(shape, color, "left", center, 8.0, (235, 235, 235), 32)
            images.append(np.asarray(draw_scene(scene), dtype=np.float32) / 127.5 - 1.0)  # (32, 32, 3) in [-1, 1]
            captions.append([1, color_id, shape_id])
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (8, 3, 32, 32)
    return pixels, torch.tensor(captions)


def retrieval_accuracy(model, pixels, ids) -> float:
    model.eval()
    with torch.no_grad():
        sim = model(pixels, ids, return_loss=False).sim_i2t  # (images, texts)
    model.train()
    return float((sim.argmax(dim=1) == torch.arange(len(ids))).float().mean())


def test_tiny_pretraining_learns_contrastive_retrieval():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a shared CPU
    try:
        model = tiny_model(seed=1, width=64)
        pixels, ids = shape_caption_set()
        before = retrieval_accuracy(model, pixels, ids)
        counts = model.set_training_stage("qformer_pretrain")
        assert counts["vision_tower"] == 0 and not any(p.requires_grad for p in model.vision_tower.parameters())
        assert all(p.requires_grad for p in model.itm_head.parameters())
        trained = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("temp.")]
        optimizer = torch.optim.AdamW([{"params": trained}, {"params": [model.temp.weight], "lr": 1e-4}], lr=2e-3)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(150):
            loss = model(pixels, ids, generator=generator).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            warmup.step()
        after = retrieval_accuracy(model, pixels, ids)
    finally:
        torch.set_num_threads(threads)
    assert before <= 0.25, before  # chance is 1/8
    assert after >= 0.875, (before, after)


def test_stage1_weights_load_into_the_generation_model(tmp_path):
    model = tiny_model(seed=1)
    with torch.no_grad():
        model.query_tokens.weight.add_(1.0)  # make sure nothing is re-initialised by accident
    model.save_pretrained(tmp_path)
    generation, info = vlmzoo.ZooBlip2ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    stage1 = model.state_dict()
    stage2 = generation.state_dict()
    shared = [key for key in stage1 if key.startswith(("model.vision_tower.", "model.qformer.", "model.query_tokens."))]
    assert len(shared) > 20 and "model.query_tokens.weight" in shared
    for key in shared:
        assert torch.equal(stage1[key], stage2[key]), key
    unexpected = set(info["unexpected_keys"])
    assert {"itm_head.weight", "temp.weight", "vision_projection.weight", "lm_head.bias"} <= unexpected
    assert any(key.startswith("model.multi_modal_projector") for key in info["missing_keys"])
    assert not any(key.startswith(("model.qformer.", "model.vision_tower.")) for key in info["missing_keys"])
    reloaded, info = ZooBlip2ForQFormerPretraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels, ids, mask = random_batch()
    with torch.no_grad():
        expected = model.eval()(pixels, ids, mask, generator=torch.Generator().manual_seed(0))
        got = reloaded.eval()(pixels, ids, mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(got.temperature, torch.tensor(0.07))


def test_stage_components_cover_every_parameter_once():
    model = tiny_model()
    parts = model.component_parts()
    owned = [id(p) for modules in parts.values() for module in modules for p in module.parameters()]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))
    counts = model.set_training_stage("qformer_pretrain")
    vision = sum(p.numel() for p in model.vision_tower.parameters())
    assert counts["qformer"] == sum(p.numel() for p in model.parameters()) - vision
    with pytest.raises(ValueError, match="which this model does not have"):
        model.set_training_stage("align")
