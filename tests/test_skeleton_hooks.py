"""The generic pair's hooks, exercised by a small family defined here (DESIGN.md §4).

The in-test family has what the next families need and LLaVA lacks: a swapped rotary module (the
``build_language_model`` hook), M-RoPE-style (3, B, L) positions with a ``rope_deltas`` kept across decode
steps (the ``compute_position_ids`` hook), and two placeholder kinds, images and videos, each with its own
features and its own count check.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlmzoo import ZooVLMConfig, ZooVLMForConditionalGeneration, ZooVLMModel
from vlmzoo.modeling.blocks import LearnedTokens
from vlmzoo.modeling.modeling_base import ZooPreTrainedModel

TILE, PATCH = 28, 14  # a 2x2 grid of tokens per frame (CLS dropped)
GRID = TILE // PATCH
IMAGE, VIDEO = 300, 301


@strict
class HookFamilyConfig(ZooVLMConfig):
    model_type = "vlmzoo_test_hooks"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model",
            init_kwargs=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=TILE, patch_size=PATCH),
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama",
            init_kwargs=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=320, max_position_embeddings=256),
        ),
    }
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision_tower": ("vision_tower",),
        "multi_modal_projector": ("multi_modal_projector", "learned_queries"),
        "language_model": ("language_model",),
    }
    default_training_stages: ClassVar[dict[str, list[str]]] = {"align": ["multi_modal_projector"]}
    image_token_id: int = IMAGE
    video_token_id: int = VIDEO


class SectionRotary(nn.Module):
    """Rotary embedding for (3, B, L) positions: each third of the frequencies reads one position stream."""

    def __init__(self, rotary: nn.Module, sections: tuple[int, int, int]):
        super().__init__()
        self.rotary = rotary
        self.sections = sections
        self.seen: list[torch.Tensor] = []  # the positions of every call, for the tests

    def forward(self, x, position_ids):
        self.seen.append(position_ids.clone())
        if position_ids.dim() == 2:
            position_ids = position_ids.expand(3, *position_ids.shape)
        streams = [self.rotary(x, positions) for positions in position_ids]  # 3 x (cos, sin), each (B, L, D)
        # frequency i (of D/2, repeated twice along D) reads stream 0, 1 or 2 by section
        stream_of_frequency = torch.repeat_interleave(torch.arange(3), torch.tensor(self.sections)).repeat(2)
        cos = torch.stack([s[0] for s in streams])[stream_of_frequency, ..., torch.arange(len(stream_of_frequency))]
        sin = torch.stack([s[1] for s in streams])[stream_of_frequency, ..., torch.arange(len(stream_of_frequency))]
        # advanced indexing puts the frequency axis first: (D, B, L) -> (B, L, D)
        return cos.permute(1, 2, 0), sin.permute(1, 2, 0)


class HookFamilyPreTrainedModel(ZooPreTrainedModel):
    config_class = HookFamilyConfig
    input_modalities = ("image", "video", "text")


class HookFamilyModel(HookFamilyPreTrainedModel, ZooVLMModel):
    modality_pixel_inputs = {"image": "pixel_values", "video": "pixel_values_videos"}

    def build_components(self, config):
        from transformers import AutoModel

        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.learned_queries = LearnedTokens(1, config.text_config.hidden_size)  # a learned vector, as BLIP-2's
        self.rope_deltas = None

    def build_language_model(self, text_config):
        language_model = super().build_language_model(text_config)
        language_model.rotary_emb = SectionRotary(language_model.rotary_emb, sections=(4, 2, 2))
        return language_model

    def _frames(self, pixels):  # (frames, 3, H, W) -> (frames, GRID * GRID, text width)
        hidden = self.vision_tower(pixels, return_dict=True).last_hidden_state[:, 1:]
        return self.multi_modal_projector(hidden) + self.learned_queries.weight

    def get_image_features(self, pixel_values, **kwargs):
        features = self._frames(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(features))

    def get_video_features(self, pixel_values_videos, **kwargs):
        videos, frames = pixel_values_videos.shape[:2]
        # (videos, frames, 3, H, W) -> (videos * frames, ...) -> per video (frames * GRID * GRID, width)
        features = self._frames(pixel_values_videos.flatten(0, 1)).view(videos, frames * GRID * GRID, -1)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(features))

    def forward(self, input_ids=None, pixel_values=None, pixel_values_videos=None, attention_mask=None,
                position_ids=None, cache=None, inputs_embeds=None, use_cache=None, mm_encoder_outputs=None, **kwargs):
        pixels = {"pixel_values": pixel_values, "pixel_values_videos": pixel_values_videos}
        return self.multimodal_forward(input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, pixels,
                                       {}, mm_encoder_outputs, kwargs)  # fmt: skip

    def compute_position_ids(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, **family_inputs):
        if position_ids is not None:
            return position_ids
        past = cache.get_seq_length() if cache is not None else 0
        if past > 0:  # decode: continue after the prefill's largest position
            steps = torch.arange(past, past + inputs_embeds.shape[1]).view(1, -1) + self.rope_deltas
            return steps.unsqueeze(0).expand(3, -1, -1)
        positions = torch.stack([mrope_positions(row) for row in input_ids], dim=1)  # (3, B, L)
        self.rope_deltas = positions.amax(dim=(0, 2)).view(-1, 1) + 1 - input_ids.shape[1]
        return positions


def mrope_positions(ids: torch.Tensor) -> torch.Tensor:
    """(3, L) positions, the plain loop: text (p, p, p); a visual block of frames x GRID x GRID tokens gets
    (p + frame, p + row, p + column); the next text continues after the block's largest position."""
    out, p, i = [], 0, 0
    ids = ids.tolist()
    while i < len(ids):
        if ids[i] in (IMAGE, VIDEO):
            j = i
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            block = j - i
            for k in range(block):
                frame, rest = divmod(k, GRID * GRID)
                out.append((p + frame, p + rest // GRID, p + rest % GRID))
            p = max(max(t) for t in out[-block:]) + 1
            i = j
        else:
            out.append((p, p, p))
            p += 1
            i += 1
    return torch.tensor(out).T


class HookFamilyForConditionalGeneration(HookFamilyPreTrainedModel, ZooVLMForConditionalGeneration):
    base_model_class = HookFamilyModel

    def forward(self, input_ids=None, pixel_values=None, pixel_values_videos=None, attention_mask=None,
                position_ids=None, cache=None, inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                mm_encoder_outputs=None, **kwargs):
        model_inputs = dict(input_ids=input_ids, pixel_values=pixel_values, pixel_values_videos=pixel_values_videos,
                            attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            inputs_embeds=inputs_embeds, use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs)
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


def build(seed=0):
    torch.manual_seed(seed)
    return HookFamilyForConditionalGeneration(HookFamilyConfig()).eval()


def inputs(frames=2, text=(5, 6, 7)):
    """[BOS, image block, text, video block, text]; pixels for one image and one video."""
    tokens = [1, *[IMAGE] * (GRID * GRID), *text, *[VIDEO] * (frames * GRID * GRID), 9, 10]
    generator = torch.Generator().manual_seed(3)
    return {
        "input_ids": torch.tensor([tokens]),
        "attention_mask": torch.ones(1, len(tokens), dtype=torch.long),
        "pixel_values": torch.randn(1, 3, TILE, TILE, generator=generator),
        "pixel_values_videos": torch.randn(1, frames, 3, TILE, TILE, generator=generator),
    }


def test_the_family_inputs_show_in_the_forward_signature():
    import inspect

    for model in (build(), build().model):
        assert "pixel_values_videos" in inspect.signature(model.forward).parameters


def test_build_language_model_hook_swaps_the_rotary_module():
    model = build()
    assert isinstance(model.language_model.rotary_emb, SectionRotary)
    with torch.no_grad():
        model(**inputs())
    (positions,) = model.language_model.rotary_emb.seen
    assert positions.shape == (3, 1, inputs()["input_ids"].shape[1])


def test_position_hook_gives_three_streams_and_keeps_rope_deltas_across_decode_steps():
    model = build()
    batch = inputs()
    generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                               suppress_tokens=[IMAGE, VIDEO])  # fmt: skip
    prefill, *steps = model.language_model.rotary_emb.seen
    expected = mrope_positions(batch["input_ids"][0])
    torch.testing.assert_close(prefill[:, 0], expected, rtol=0, atol=0)
    # each decode step: all three streams equal, one past the prefill's largest position, then +1 per step
    assert len(steps) == 2
    for offset, step in enumerate(steps, start=1):
        assert step.shape == (3, 1, 1)
        assert step.flatten().tolist() == [int(expected.max()) + offset] * 3
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_each_placeholder_kind_gets_its_own_features():
    model = build()
    batch = inputs()
    captured = {}
    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        output = model(**batch)
        image = model.model.get_image_features(batch["pixel_values"]).pooler_output[0]
        video = model.model.get_video_features(batch["pixel_values_videos"]).pooler_output[0]
    ids = batch["input_ids"][0]
    torch.testing.assert_close(captured["embeds"][0, ids == IMAGE], image, rtol=0, atol=0)
    torch.testing.assert_close(captured["embeds"][0, ids == VIDEO], video, rtol=0, atol=0)
    assert [f.shape[0] for f in output.image_outputs.pooler_output] == [GRID * GRID]
    assert [f.shape[0] for f in output.video_outputs.pooler_output] == [2 * GRID * GRID]


def test_each_placeholder_kind_has_its_own_count_check():
    model = build()
    batch = inputs()
    short = batch["input_ids"].clone()
    short[0, (short[0] == VIDEO).nonzero()[0, 0]] = 8  # one video placeholder too few
    with pytest.raises(ValueError, match="the text has 7 video tokens but the videos produce 8 embeddings"):
        model(**{**batch, "input_ids": short})
    short = batch["input_ids"].clone()
    short[0, (short[0] == IMAGE).nonzero()[0, 0]] = 8
    with pytest.raises(ValueError, match="the text has 3 image tokens but the images produce 4 embeddings"):
        model(**{**batch, "input_ids": short})


def test_every_parameter_of_the_test_family_belongs_to_one_component():
    model = build()
    owners: dict[int, list[str]] = {}
    for component, parts in model.component_parts().items():
        for part in parts:
            for parameter in part.parameters():
                owners.setdefault(id(parameter), []).append(component)
    assert all(len(owners.get(id(p), [])) == 1 for p in model.parameters())



def test_learned_vectors_keep_training_under_lora():
    from peft import get_peft_model

    from vlmzoo.training import lora_config

    model = build()
    model.set_training_stage("align")
    config = lora_config(model, r=2, stage="align")
    assert "learned_queries" in config.modules_to_save
    peft_model = get_peft_model(model, config)
    before = model.model.learned_queries.weight.detach().clone()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    batch = inputs()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    merged = peft_model.merge_and_unload()
    assert not torch.equal(merged.model.learned_queries.weight, before)


def test_a_bare_parameter_component_is_refused_by_lora_config():
    from vlmzoo.training import lora_config

    model = build()
    model.model.bare_vector = nn.Parameter(torch.zeros(3))
    table = {**HookFamilyConfig.component_table, "multi_modal_projector": ("multi_modal_projector", "bare_vector")}
    model.config.__class__ = type("BareConfig", (HookFamilyConfig,), {"component_table": table})
    with pytest.raises(ValueError, match=r"holds bare parameters \['model.bare_vector'\], which LoRA"):
        lora_config(model, stage="align")
