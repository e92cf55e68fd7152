"""Several towers (DESIGN.md §4): the base config's ``aux_vision_config`` and ``vision_configs``, their building, and
the two in-test families (tests/zoo_test_families.py) beyond what the common suite checks: stages that name the
extra towers, save -> load of every expert, attention implementations, and the views each tower is fed.
"""

from __future__ import annotations

import json

import pytest
from transformers.testing_utils import CaptureLogger
import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, ConvNextConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from vlmzoo import ZooVLMConfig, presets
from vlmzoo.modeling.vision_towers import ViewSpec, VisionTowers, build_tower, build_vision_towers, derive_view

from helpers import build, two_prompt_batch
from zoo_test_families import THREE_EXPERTS, TINY_CLIP, TINY_CONVNEXT, TINY_SIGLIP, TWO_TOWERS

TWO, THREE = (TWO_TOWERS, "tiny"), (THREE_EXPERTS, "tiny")


@strict
class TowerFieldsConfig(ZooVLMConfig):
    """A config that declares only the primary tower and the LM: the base alone handles the extra towers."""

    model_type = "vlmzoo_test_tower_fields"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=TINY_CLIP),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 64}),
    }
    image_token_id: int = 5


AutoConfig.register(TowerFieldsConfig.model_type, TowerFieldsConfig, exist_ok=True)

EXPERTS = {
    "siglip": {"model_type": "siglip_vision_model", **TINY_SIGLIP},
    "clip": {"model_type": "clip_vision_model", **TINY_CLIP},
    "convnext": {"model_type": "convnext", **TINY_CONVNEXT},
}  # not in alphabetical order: the order must survive JSON's sorted keys
AUX = {"model_type": "convnext", **TINY_CONVNEXT}


def tower_fields(**overrides) -> TowerFieldsConfig:
    return TowerFieldsConfig(**{"aux_vision_config": dict(AUX), "vision_configs": dict(EXPERTS), **overrides})


# ----- the config --------------------------------------------------------------------------------------------------
def test_towers_default_to_none_so_existing_families_are_unchanged():
    config = presets.get_config("llava", "tiny")
    assert config.aux_vision_config is None and config.vision_configs is None
    saved = json.loads(config.to_json_string())
    assert "aux_vision_config" not in saved and "vision_configs" not in saved
    assert TowerFieldsConfig().vision_configs is None and TowerFieldsConfig().aux_vision_config is None


def test_dicts_with_a_model_type_and_configs_both_become_typed_sub_configs():
    config = tower_fields(vision_configs={"clip": AutoConfig.for_model(**EXPERTS["clip"]), "convnext": EXPERTS["convnext"]})
    assert type(config.aux_vision_config).__name__ == "ConvNextConfig"
    assert config.aux_vision_config.hidden_sizes == TINY_CONVNEXT["hidden_sizes"]
    assert [type(c).__name__ for c in config.vision_configs.values()] == ["CLIPVisionConfig", "ConvNextConfig"]
    assert list(config.vision_configs) == ["clip", "convnext"]


def _round_trips(config, tmp_path):
    fields = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("model_type", "transformers_version")}  # noqa: E731
    yield "to_dict", TowerFieldsConfig(**fields(config))
    yield "to_json_string", TowerFieldsConfig.from_dict(json.loads(config.to_json_string()))
    yield "to_json_string(use_diff=False)", TowerFieldsConfig.from_dict(json.loads(config.to_json_string(use_diff=False)))
    config.save_pretrained(tmp_path)
    yield "save_pretrained", AutoConfig.from_pretrained(tmp_path)


def test_experts_keep_their_order_types_and_fields_through_every_round_trip(tmp_path):
    config = tower_fields()
    assert list(config.vision_configs) == ["siglip", "clip", "convnext"]
    # on disk: an ordered list of {"name", "config"} entries (transformers sorts the keys of config.json)
    saved = json.loads(config.to_json_string())
    assert [entry["name"] for entry in saved["vision_configs"]] == ["siglip", "clip", "convnext"]
    for how, loaded in _round_trips(config, tmp_path):
        assert type(loaded) is TowerFieldsConfig, how
        assert list(loaded.vision_configs) == ["siglip", "clip", "convnext"], how
        for name, expert in config.vision_configs.items():
            assert type(loaded.vision_configs[name]) is type(expert), (how, name)
            assert loaded.vision_configs[name].to_dict() == expert.to_dict(), (how, name)
        assert type(loaded.aux_vision_config) is ConvNextConfig, how
        assert loaded.aux_vision_config.to_dict() == config.aux_vision_config.to_dict(), how


def test_family_defaults_fill_the_experts_and_a_dict_must_still_name_its_model_type():
    from zoo_test_families import ThreeExpertsConfig

    config = ThreeExpertsConfig()
    assert list(config.vision_configs) == ["clip", "siglip", "convnext"]
    assert [c.model_type for c in config.vision_configs.values()] == ["clip_vision_model", "siglip_vision_model", "convnext"]
    assert config.vision_configs["siglip"].image_size == TINY_SIGLIP["image_size"]
    given = ThreeExpertsConfig(vision_configs={"convnext": {"model_type": "convnext", "hidden_sizes": [8, 16]},
                                               "clip": {"model_type": "clip_vision_model", **TINY_CLIP}},
                               tower_views=None)  # fmt: skip
    assert list(given.vision_configs) == ["convnext", "clip"]
    assert given.vision_configs["convnext"].model_type == "convnext" and given.vision_configs["convnext"].hidden_sizes == [8, 16]
    # a dict without one is the name's default kind when that kind reads every key (as transformers' composites) ...
    default_kind = ThreeExpertsConfig(vision_configs={"clip": dict(TINY_CLIP)}, tower_views=None)
    assert default_kind.vision_configs["clip"].model_type == "clip_vision_model"
    # ... and keys the default does not read (another tower's?) are named in a warning with the fix
    from transformers.utils import logging as hf_logging

    with CaptureLogger(hf_logging.get_logger("vlmzoo.configuration.validation")) as captured:
        ThreeExpertsConfig(vision_configs={"clip": {**TINY_CLIP, "hidden_sizes": [8, 16]}}, tower_views=None)
    assert "vision_configs['clip'] is a dict without a 'model_type', so it is built as the family's default " \
           "'clip_vision_model', which does not read its keys ['hidden_sizes']" in captured.out


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_aux_tower_and_every_expert(tmp_path, implementation):
    config = tower_fields(attn_implementation=implementation)
    towers = [config.vision_config, config.aux_vision_config, *config.vision_configs.values()]
    assert [tower._attn_implementation for tower in towers] == [implementation] * 5
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, attn_implementation=implementation)
    towers = [loaded.vision_config, loaded.aux_vision_config, *loaded.vision_configs.values()]
    assert [tower._attn_implementation for tower in towers] == [implementation] * 5


def test_a_dict_attn_implementation_can_name_one_expert():
    config = tower_fields()
    config._attn_implementation = {"": "sdpa", "aux_vision_config": "eager", "vision_configs": {"clip": "eager"}}
    assert config._attn_implementation == "sdpa"
    assert config.aux_vision_config._attn_implementation == "eager"
    assert {name: c._attn_implementation for name, c in config.vision_configs.items()} == {
        "siglip": None, "clip": "eager", "convnext": None,
    }  # fmt: skip  (as transformers: a dict leaves the sub-configs it does not name as they were)
    config._attn_implementation = {"": "eager", "vision_configs": "flex_attention"}
    assert {c._attn_implementation for c in config.vision_configs.values()} == {"flex_attention"}


TOWER_ERRORS = [
    ("empty-experts", dict(vision_configs={}), ValueError, "vision_configs is empty; give at least one expert"),
    ("digit-name", dict(vision_configs={"1clip": EXPERTS["clip"]}), ValueError,
     "vision_configs name '1clip' is not a valid module name"),
    ("dotted-name", dict(vision_configs={"a.b": EXPERTS["clip"]}), ValueError, "'a.b' is not a valid module name"),
    ("keyword-name", dict(vision_configs={"class": EXPERTS["clip"]}), ValueError, "'class' is not a valid module name"),
    ("non-string-name", dict(vision_configs={3: EXPERTS["clip"]}), TypeError, "vision_configs names must be strings, got 3"),
    ("twice-named", dict(vision_configs=[("clip", EXPERTS["clip"]), ("clip", EXPERTS["clip"])]), ValueError,
     "names the expert 'clip' twice"),
    ("expert-of-unknown-type", dict(vision_configs={"clip": {"model_type": "clip_vision_modle"}}), ValueError,
     r"vision_configs\['clip'\] has model_type 'clip_vision_modle', which transformers does not know"),
    ("expert-is-a-language-model", dict(vision_configs={"lm": {"model_type": "llama"}}), ValueError,
     r"vision_configs\['lm'\] is a 'llama' config, which does not describe a vision model"),
    ("expert-is-a-string", dict(vision_configs={"clip": "openai/clip"}), TypeError,
     r"vision_configs\['clip'\] must be a PreTrainedConfig or a dict with a 'model_type', got str"),
    ("experts-as-a-string", dict(vision_configs="clip,siglip"), TypeError, "vision_configs must map expert names to configs"),
    ("bad-list-entry", dict(vision_configs=[{"name": "clip"}]), TypeError,
     r"vision_configs\[0\] must be a \{'name': ..., 'config': ...\} entry or a \(name, config\) pair"),
    ("aux-is-a-language-model", dict(aux_vision_config={"model_type": "llama"}), ValueError,
     "aux_vision_config is a 'llama' config, which does not describe a vision model"),
]


@pytest.mark.parametrize("name, fields, error, fragment", TOWER_ERRORS, ids=[e[0] for e in TOWER_ERRORS])
def test_config_refuses_towers_no_model_can_build(name, fields, error, fragment):
    with pytest.raises(error, match=fragment):
        tower_fields(**fields)


# ----- building ---------------------------------------------------------------------------------------------
def test_an_attention_free_tower_takes_any_attention_implementation():
    config = ConvNextConfig(**TINY_CONVNEXT)
    config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="ConvNextModel does not support an attention implementation"):
        AutoModel.from_config(config)  # transformers refuses: why build_tower exists
    torch.manual_seed(0)
    tower = build_tower(config).eval()
    assert tower.config._attn_implementation == "sdpa"
    tower.set_attn_implementation("eager")
    assert tower.config._attn_implementation == "eager"
    torch.manual_seed(0)
    plain = AutoModel.from_config(ConvNextConfig(**TINY_CONVNEXT)).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(tower(pixels).last_hidden_state, plain(pixels).last_hidden_state)


def test_experts_are_a_module_dict_in_order_that_passes_on_what_transformers_gathers():
    config = tower_fields()
    towers = build_vision_towers(config.vision_configs)
    assert isinstance(towers, VisionTowers) and list(towers) == ["siglip", "clip", "convnext"]
    assert [type(t).__name__ for t in towers.values()] == ["SiglipVisionModel", "CLIPVisionModel", "ConvNextModel"]
    assert {"SiglipEncoderLayer", "CLIPEncoderLayer", "ConvNextLayer"} <= towers._no_split_modules
    with pytest.raises(ValueError, match=r"expert names \['keys'\] are attributes of nn.ModuleDict"):
        build_vision_towers({"keys": config.vision_configs["clip"]})
    with pytest.raises(ValueError, match="needs a non-empty mapping"):
        build_vision_towers({})


# ----- the in-test families ----------------------------------------------------------------------------------
def _towers(model) -> dict:
    """Tower name (as in the config's ``tower_views``) -> tower module."""
    base = model.model
    if hasattr(base, "vision_towers"):
        return dict(base.vision_towers.items())
    return {"vision_tower": base.vision_tower, "aux_vision_tower": base.aux_vision_tower}


def _parameters(module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("case, component", [(TWO, "aux_vision_tower"), (THREE, "vision_towers")], ids=str)
def test_a_training_stage_can_name_the_extra_towers(case, component):
    model, _ = build(case, training_stages={"towers": [component], "align": ["multi_modal_projector"]})
    counts = model.set_training_stage("towers")
    owned = _parameters(getattr(model, component))
    assert owned
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (id(parameter) in owned), name
    assert counts[component] == sum(p.numel() for p in getattr(model, component).parameters())
    assert all(count == 0 for other, count in counts.items() if other != component)
    model.set_training_stage("align")
    assert not any(p.requires_grad for p in getattr(model, component).parameters())


def test_save_and_load_keep_every_expert_tower(tmp_path):
    model, _ = build(THREE)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert list(loaded.config.vision_configs) == ["clip", "siglip", "convnext"]
    assert list(loaded.vision_towers) == ["clip", "siglip", "convnext"]
    for name, tower in model.vision_towers.items():
        reloaded = loaded.vision_towers[name]
        assert type(reloaded) is type(tower) and type(reloaded.config) is type(tower.config), name
        assert reloaded.config.to_dict() == tower.config.to_dict(), name
        state, reloaded_state = tower.state_dict(), reloaded.state_dict()
        assert sorted(state) == sorted(reloaded_state), name
        assert all(torch.equal(state[key], reloaded_state[key]) for key in state), name


@pytest.mark.parametrize("case", [TWO, THREE], ids=str)
def test_set_attn_implementation_reaches_every_tower(case):
    model, _ = build(case)
    towers = list(_towers(model).values())
    assert len(towers) == (2 if case == TWO else 3)
    for implementation in ("eager", "sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert [t.config._attn_implementation for t in towers] == [implementation] * len(towers)


@pytest.mark.parametrize("case", [TWO, THREE], ids=str)
def test_each_tower_is_fed_its_derived_view(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    config = model.config
    towers = _towers(model)
    seen = {}
    for name, tower in towers.items():
        tower.register_forward_pre_hook(lambda module, args, kwargs, name=name: seen.update({name: args[0]}), with_kwargs=True)
    with torch.no_grad():
        model(**batch)
    pixels = batch["pixel_values"]
    for name, spec in config.tower_views.items():
        expected = derive_view(pixels, config.image_mean, config.image_std, ViewSpec(**spec))
        assert torch.equal(seen[name], expected), name
        assert seen[name].shape[-2:] == (towers[name].config.image_size,) * 2, name
    # the ConvNeXt's ImageNet statistics differ from the processor's CLIP ones: its view is not the pixels
    convnext = next(name for name, tower in towers.items() if tower.config.model_type == "convnext")
    assert (seen[convnext] - pixels).abs().max() > 0.01
