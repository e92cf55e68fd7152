"""The generic pair's hooks, exercised by a small family defined here (DESIGN.md §4).

The in-test family has what the next families need and LLaVA lacks: a swapped rotary module (the
``build_language_model`` hook, with ``vlmzoo.modeling.rope``'s M-RoPE), M-RoPE's (3, B, L) positions with a
``rope_deltas`` kept across decode steps (the ``compute_position_ids`` hook, with rope.py's position index),
and two placeholder kinds, images and videos, each with its own features and its own count check. The loop
``mrope_positions`` below is the test's independent reference for the positions.
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
from transformers.utils.generic import can_return_tuple

from vlmzoo.modeling.blocks import LearnedTokens
from vlmzoo.modeling.modeling_base import ZooPreTrainedModel
from vlmzoo.modeling.rope import (
    MultimodalRotaryEmbedding,
    mrope_decode_positions,
    mrope_position_index,
    swap_in_mrope,
)

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


def placeholder_grids(input_ids: torch.Tensor, token_id: int, frames_per_run: bool) -> torch.Tensor:
    """The family's (t, h, w) grids, read from its text (it has no grid inputs): GRID x GRID tokens per frame;
    a video is one run of placeholders (its frames), each image one frame."""
    grids = []
    for row in input_ids.tolist():
        run = 0
        for token in [*row, None]:
            if token == token_id:
                run += 1
            elif run:
                frames = run // (GRID * GRID)
                grids += [(frames, GRID, GRID)] if frames_per_run else [(1, GRID, GRID)] * frames
                run = 0
    return torch.tensor(grids, dtype=torch.long).view(-1, 3)


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
        swap_in_mrope(language_model, mrope_section=(4, 2, 2))  # head_dim 16: 8 frequencies
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

    @can_return_tuple
    def forward(self, input_ids=None, pixel_values=None, pixel_values_videos=None, attention_mask=None,
                position_ids=None, cache=None, inputs_embeds=None, use_cache=None, mm_encoder_outputs=None, **kwargs):
        """The video pixels are this family's own input: the forward takes them by name."""
        pixels = {"pixel_values": pixel_values, "pixel_values_videos": pixel_values_videos}
        return self.multimodal_forward(input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, pixels,
                                       {}, mm_encoder_outputs, kwargs)  # fmt: skip

    def compute_position_ids(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, **family_inputs):
        if position_ids is not None:
            return position_ids
        past = cache.get_seq_length() if cache is not None else 0
        if past > 0:  # decode: continue after the prefill's largest position
            return mrope_decode_positions(self.rope_deltas, past, inputs_embeds.shape[1], attention_mask)
        positions, self.rope_deltas = mrope_position_index(
            input_ids, attention_mask, IMAGE, VIDEO, image_grid_thw=placeholder_grids(input_ids, IMAGE, False),
            video_grid_thw=placeholder_grids(input_ids, VIDEO, True),
        )  # fmt: skip
        return positions

    def packing_position_ids(self, input_ids, attention_mask, **family_inputs):
        """Each right-padded row's prefill positions, (3, B, L): what a packed batch restarts per sample."""
        positions, _ = mrope_position_index(
            input_ids, attention_mask, IMAGE, VIDEO, image_grid_thw=placeholder_grids(input_ids, IMAGE, False),
            video_grid_thw=placeholder_grids(input_ids, VIDEO, True),
        )  # fmt: skip
        return positions


def mrope_positions(ids: torch.Tensor) -> torch.Tensor:
    """The test's reference, (3, L) positions, the plain loop: text (p, p, p); a visual block of frames x GRID x GRID
    tokens gets (p + frame, p + row, p + column); the next text continues after the block's largest position."""
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

    @can_return_tuple
    def forward(self, input_ids=None, pixel_values=None, pixel_values_videos=None, attention_mask=None,
                position_ids=None, cache=None, inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                mm_encoder_outputs=None, **kwargs):
        model_inputs = dict(input_ids=input_ids, pixel_values=pixel_values, pixel_values_videos=pixel_values_videos,
                            attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            inputs_embeds=inputs_embeds, use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs)
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


def test_a_family_whose_forward_hides_its_inputs_is_refused_at_class_creation():
    with pytest.raises(TypeError, match=r"does not take the family inputs \['pixel_values_videos'\]"):
        type("HiddenInputsModel", (HookFamilyModel,), {"forward": ZooVLMModel.forward})


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


def recorded_positions(model) -> list[torch.Tensor]:
    """The positions of every call of the language model's rotary module, from now on."""
    seen: list[torch.Tensor] = []
    model.language_model.rotary_emb.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    return seen


def test_build_language_model_hook_swaps_the_rotary_module():
    model = build()
    assert isinstance(model.language_model.rotary_emb, MultimodalRotaryEmbedding)
    assert model.language_model.rotary_emb.mrope_section == (4, 2, 2)
    seen = recorded_positions(model)
    with torch.no_grad():
        model(**inputs())
    (positions,) = seen
    assert positions.shape == (3, 1, inputs()["input_ids"].shape[1])


def test_position_hook_gives_three_streams_and_keeps_rope_deltas_across_decode_steps():
    model = build()
    batch = inputs()
    seen = recorded_positions(model)
    generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                               suppress_tokens=[IMAGE, VIDEO])  # fmt: skip
    prefill, *steps = seen
    expected = mrope_positions(batch["input_ids"][0])
    torch.testing.assert_close(prefill[:, 0], expected, rtol=0, atol=0)
    # each decode step: all three streams equal, one past the prefill's largest position, then +1 per step
    assert len(steps) == 2
    for offset, step in enumerate(steps, start=1):
        assert step.shape == (3, 1, 1)
        assert step.flatten().tolist() == [int(expected.max()) + offset] * 3
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def two_prompts():
    """Two rows, the second shorter and left-padded (id 0, mask 0): each with an image and a two-frame video."""
    rows = inputs(text=(5, 6, 7)), inputs(text=(5,))
    pad = rows[0]["input_ids"].shape[1] - rows[1]["input_ids"].shape[1]
    left_padded = {name: nn.functional.pad(rows[1][name], (pad, 0)) for name in ("input_ids", "attention_mask")}
    return pad, {
        "input_ids": torch.cat([rows[0]["input_ids"], left_padded["input_ids"]]),
        "attention_mask": torch.cat([rows[0]["attention_mask"], left_padded["attention_mask"]]),
        "pixel_values": torch.cat([row["pixel_values"] for row in rows]),
        "pixel_values_videos": torch.cat([row["pixel_values_videos"] for row in rows]),
    }


def test_left_padded_decode_steps_continue_each_row_from_its_rope_deltas():
    model = build()
    pad, batch = two_prompts()
    seen = recorded_positions(model)
    with torch.no_grad():
        prompt = model(**batch, use_cache=True)
        token = prompt.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        step = model(input_ids=token, attention_mask=mask, cache=prompt.cache, use_cache=True)
        prefill, decode = seen
        # the same token without a cache, at the positions the hook gave: the same logits
        whole = model(**{**batch, "input_ids": torch.cat([batch["input_ids"], token], dim=1), "attention_mask": mask},
                      position_ids=torch.cat([prefill, decode], dim=-1), use_cache=False)  # fmt: skip
    for row, padding in ((0, 0), (1, pad)):
        expected = mrope_positions(batch["input_ids"][row, padding:])
        torch.testing.assert_close(prefill[:, row, padding:], expected, rtol=0, atol=0)
        assert not prefill[:, row, :padding].any()
        assert decode[:, row].flatten().tolist() == [int(expected.max()) + 1] * 3
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], rtol=0, atol=1e-5)


def test_generation_with_and_without_cache_agree():
    model = build()
    _, batch = two_prompts()
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, suppress_tokens=[IMAGE, VIDEO])
    assert torch.equal(model.generate(**batch, **settings), model.generate(**batch, use_cache=False, **settings))


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
