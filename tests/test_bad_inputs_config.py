"""Hostile config inputs every family inherits (docs/design.md §7), and saving onto a file: the second table of
``test_bad_inputs.py``'s kind, parametrised over the family table's tiny presets (the ``case`` fixture).

Each input is refused with a ``TypeError`` / ``ValueError`` (a fragment of its message says what to change), or
logged as a warning at transformers' default level when it would otherwise be ignored (a mistyped key), or gives
the exact result (a saved config loads back silently). Nothing here names a family: the fields a family adds are
read from its config class (its dataclass fields beyond transformers' ``PreTrainedConfig``'s).
"""

from __future__ import annotations

import dataclasses
import json
import re
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedConfig
from transformers.utils import logging as hf_logging

import vlmzoo
from vlmzoo import presets

from helpers import TINY_CASES, build, case_id

# transformers' standard size names, as the configs read them (T5: hidden_size is d_model, via attribute_map)
SUB_CONFIG_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _config(case):
    return presets.get_config(*case)


def _own_fields(config_class) -> list[str]:
    """The fields vlmzoo (and the family) declare: the config's dataclass fields that transformers' base lacks."""
    base = set(PreTrainedConfig.__dataclass_fields__)
    return [f.name for f in dataclasses.fields(config_class) if f.name not in base]


def _mangled(name: str) -> str:
    """``name`` with its middle letter dropped: a typo a user makes."""
    middle = len(name) // 2
    return name[:middle] + name[middle + 1 :]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _sub_configs(config) -> dict[str, tuple[PreTrainedConfig, callable]]:
    """Every sub-config by its name in messages, with how to pass a changed dict of it back as an override."""
    found = {}
    for key in ("vision_config", "text_config", "qformer_config", "aux_vision_config"):
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            found[key] = (sub, lambda fields, key=key: {key: fields})
    for name, expert in (getattr(config, "vision_configs", None) or {}).items():
        experts = lambda fields, name=name: {  # noqa: E731
            "vision_configs": {n: (fields if n == name else e.to_dict()) for n, e in config.vision_configs.items()}
        }
        found[f"vision_configs['{name}']"] = (expert, experts)
    return found


# ----- types of vlmzoo's own fields ------------------------------------------------------------------------------
SHARED_TYPE_ERRORS = [
    # (id, overrides, fragment): fields every family has
    ("tie-as-string", {"tie_word_embeddings": "false"},
     r"tie_word_embeddings must be bool \| None, got 'false' \(str\); pass True or False"),
    ("tie-as-int", {"tie_word_embeddings": 0}, r"tie_word_embeddings must be bool \| None, got 0 \(int\)"),
    ("image-token-as-string", {"image_token_id": "3"},
     r"image_token_id must be int.*, got '3' \(str\); pass a whole number"),
    ("image-token-as-bool", {"image_token_id": True}, r"image_token_id must be int.*, got True \(bool\)"),
    ("image-token-as-float", {"image_token_id": 3.0}, r"image_token_id must be int.*, got 3\.0 \(float\)"),
    ("stage-as-a-string", {"training_stages": {"align": "multi_modal_projector"}},
     r"training_stages must be dict\[str, list\[str\]\] \| None"),
    ("learning-rate-as-string", {"recipe_learning_rates": {"align": "1e-3"}}, r"recipe_learning_rates must be dict"),
]


@pytest.mark.parametrize("hostile", SHARED_TYPE_ERRORS, ids=[h[0] for h in SHARED_TYPE_ERRORS])
def test_shared_fields_refuse_values_of_the_wrong_type(case, hostile):
    _, overrides, fragment = hostile
    with pytest.raises(TypeError, match=fragment):
        presets.get_config(*case, **overrides)


def test_every_own_field_refuses_a_value_of_the_wrong_type(case):
    config_class = type(_config(case))
    fields = _own_fields(config_class)
    assert {"tie_word_embeddings", "image_token_id", "text_config"} <= set(fields)
    for name in fields:
        current = getattr(_config(case), name)
        wrong = 5 if isinstance(current, str) else "false"  # a JSON-ish string where none belongs, or a number
        with pytest.raises(TypeError, match=rf"\b{name} must"):
            presets.get_config(*case, **{name: wrong})


def test_an_own_field_is_checked_on_assignment_too(case):
    config = _config(case)
    with pytest.raises(TypeError, match=r"tie_word_embeddings must be bool \| None, got 'false'"):
        config.tie_word_embeddings = "false"
    assert config.tie_word_embeddings in (True, False)


def test_a_string_tie_no_longer_ties_the_head(case):
    """The silent wrong result of the issue: ``"false"`` (truthy) tied the head."""
    model, _ = build(case, tie_word_embeddings=False)
    embeddings = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() != embeddings.data_ptr()
    with pytest.raises(TypeError, match="tie_word_embeddings must be bool"):
        build(case, tie_word_embeddings="false")


# values of the right type that no model can use: (field, value, fragment), run where the config has the field
OWN_VALUE_ERRORS = [
    ("num_query_tokens", 0, r"num_query_tokens must be a positive integer, got 0"),
    ("num_query_tokens", -1, r"num_query_tokens must be a positive integer, got -1"),
    ("image_text_hidden_size", 0, r"image_text_hidden_size must be a positive integer, got 0"),
    ("initializer_range", -0.02, r"initializer_range is the standard deviation .* >= 0, got -0\.02"),
    ("initializer_range", float("inf"), r"a finite number >= 0, got inf"),
    ("image_seq_length", 0, r"image_seq_length must be a positive integer, got 0|image_seq_length is computed"),
    ("image_seq_length", -16, r"image_seq_length must be a positive integer, got -16|image_seq_length is computed"),
    ("projector_config", {"ratio": 0}, r"got unknown options \['ratio'\]|option ratio must be"),
]


def _cases_with(name: str) -> list:
    return [case for case in TINY_CASES if hasattr(_config(case), name)]


@pytest.mark.parametrize("hostile", OWN_VALUE_ERRORS, ids=[f"{h[0]}={h[1]}" for h in OWN_VALUE_ERRORS])
def test_own_sizes_that_reach_torch_are_refused(hostile):
    name, value, fragment = hostile
    cases = _cases_with(name)
    assert cases, f"no family has {name}"
    for case in cases:
        with pytest.raises(ValueError, match=fragment):
            presets.get_config(*case, **{name: value})


def test_a_pixel_shuffle_ratio_of_zero_is_refused():
    for case in _cases_with("projector_config"):
        with pytest.raises(ValueError, match=r"option ratio must be an integer >= 1, got 0"):
            presets.get_config(*case, projector_type="pixel_shuffle", projector_config={"ratio": 0})


def _read_only_int_properties(config) -> list[str]:
    """Integer properties without a setter that vlmzoo's config classes define (a computed field)."""
    names = []
    for klass in type(config).__mro__:
        if not (isinstance(klass, type) and issubclass(klass, vlmzoo.ZooVLMConfig)):
            continue
        for name, attribute in vars(klass).items():
            if isinstance(attribute, property) and attribute.fset is None and type(getattr(config, name)) is int:
                names.append(name)
    return names


@pytest.mark.parametrize("case", [c for c in TINY_CASES if _read_only_int_properties(_config(c))], ids=case_id)
def test_a_computed_field_given_another_value_is_refused_and_the_same_value_accepted(case):
    config = _config(case)
    for name in _read_only_int_properties(config):
        value = getattr(config, name)
        with pytest.raises(ValueError, match=rf"{name} is computed from other fields, not set .*: {value} here\); got "
                                             rf"{value + 1}: leave {name} out"):
            presets.get_config(*case, **{name: value + 1})
        assert getattr(presets.get_config(*case, **{name: value}), name) == value  # a converted config may carry it


# ----- unknown keys: a warning naming the closest valid key ------------------------------------------------------
def test_a_mistyped_own_field_warns_with_the_closest_key_and_keeps_the_default(case, caplog):
    assert hf_logging.get_verbosity() <= logging.WARNING  # the default level shows warnings
    default = _config(case)
    for name in _own_fields(type(default)):
        typo = _mangled(name)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            config = presets.get_config(*case, **{typo: getattr(default, name)})
        shown = _warnings(caplog)
        assert len(shown) == 1, (typo, shown)
        assert f"got an unknown key '{typo}'" in shown[0] and f"did you mean '{name}'" in shown[0], shown
        assert getattr(config, name) == getattr(default, name)  # the default stays in force: hence the warning


def test_the_typo_of_the_issue_names_the_projector_key(case, caplog):
    with caplog.at_level(logging.DEBUG):
        config = presets.get_config(*case, projektor_type="linear")
    (shown,) = _warnings(caplog)
    assert "unknown key 'projektor_type' (= 'linear')" in shown and "has no effect" in shown
    if hasattr(config, "projector_type"):
        assert "did you mean 'projector_type' (now 'mlp2x_gelu')?" in shown
        assert config.projector_type == "mlp2x_gelu"


def test_a_mistyped_key_in_config_json_warns_at_load(case, tmp_path, caplog):
    _config(case).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["trainig_stages"] = saved["training_stages"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.DEBUG):
        AutoConfig.from_pretrained(tmp_path)
    assert any("unknown key 'trainig_stages'" in m and "did you mean 'training_stages'" in m for m in _warnings(caplog))


def test_a_mistyped_size_in_a_sub_config_dict_warns(case, caplog):
    config = _config(case)
    tried = 0
    for where, (sub, override) in _sub_configs(config).items():
        stored = sub.attribute_map.get("num_hidden_layers", "num_hidden_layers")
        if stored not in sub.to_dict():
            continue
        tried += 1
        fields = sub.to_dict()
        typo = _mangled(stored)
        fields[typo] = fields.pop(stored)
        fields.pop("layer_types", None)  # derived from the layer count (Qwen2 writes it): rebuilt from the default
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            presets.get_config(*case, **override(fields))
        shown = _warnings(caplog)
        assert any(f"{where} got an unknown key '{typo}'" in m and f"did you mean '{stored}'" in m for m in shown), shown
    assert tried >= 2  # the text and the vision config


def test_saving_and_loading_every_preset_config_is_silent(case, tmp_path, caplog):
    family = case[0]
    with caplog.at_level(logging.DEBUG):
        for preset in presets.preset_names(family):
            config = presets.get_config(family, preset)
            directory = tmp_path / preset
            config.save_pretrained(directory)
            loaded = AutoConfig.from_pretrained(directory, attn_implementation="eager")
            type(config).from_dict(config.to_dict())
            type(config).from_dict(config.to_diff_dict())
            assert loaded.to_dict()["text_config"] == config.to_dict()["text_config"]
    assert _warnings(caplog) == []


def test_a_model_and_processor_round_trip_through_transformers_is_silent(case, tmp_path, caplog):
    model, processor = build(case)
    model.config.use_cache = False  # the Trainer sets it; a generation parameter, popped at load
    with caplog.at_level(logging.DEBUG):
        model.save_pretrained(tmp_path)
        processor.save_pretrained(tmp_path)
        loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16)
        AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert [m for m in _warnings(caplog) if "unknown key" in m] == []


# ----- sub-configs: a dict that does not say which architecture ------------------------------------------------------
def _chosen_by_model_type(config, key: str) -> bool:
    spec = type(config).sub_configs_defaults.get(key)
    return spec is None or spec.config_class is AutoConfig


def _default_model_type(config, where: str) -> str | None:
    key = where.split("[")[0]
    if key == "vision_configs":
        spec = type(config).vision_configs_defaults.get(where.split("'")[1])
    else:
        spec = type(config).sub_configs_defaults.get(key)
    return getattr(spec, "model_type", None) if spec is not None else None


def test_a_sub_config_dict_without_model_type_is_the_default_kind_and_keys_it_does_not_read_are_named(case, caplog):
    """As transformers' own composite configs, a sub-config dict without model_type is the family's default kind;
    keys the default does not read (another architecture's?) are named in one warning with the fix, instead of being
    dropped silently; without a default kind the dict is refused."""
    config = _config(case)
    for where, (sub, override) in _sub_configs(config).items():
        fields = {k: v for k, v in sub.to_dict().items() if k != "model_type"}
        key = where.split("[")[0]
        if where.startswith("vision_configs") or _chosen_by_model_type(config, key):
            default = _default_model_type(config, where)
            if default is not None and sub.model_type == default:
                rebuilt = presets.get_config(*case, **override(fields))
                rebuilt = rebuilt.vision_configs[where.split("'")[1]] if key == "vision_configs" else getattr(rebuilt, key)
                assert type(rebuilt) is type(sub) and rebuilt.to_dict() == sub.to_dict(), where
            foreign = {**fields, "d_kv_of_another_architecture": 8, "rope_of_another_architecture": 2}
            if default is not None:
                with caplog.at_level(logging.WARNING):
                    caplog.clear()
                    try:
                        presets.get_config(*case, **override(foreign))
                    except ValueError:  # another kind's fields may also contradict the default (T5's encoder-decoder)
                        assert sub.model_type != default
                named = [m for m in _warnings(caplog) if f"{where} is a dict without a 'model_type'" in m]
                assert len(named) == 1 and "which does not read its keys" in named[0] and "add \"model_type\"" in named[0]
                if sub.model_type == default:  # the default kind's own keys are read: only the foreign ones are named
                    assert "d_kv_of_another_architecture" in named[0], named[0]
            else:
                with pytest.raises(ValueError, match=rf"{re.escape(where)} is a dict without a 'model_type'.*add "
                                                     rf"\"model_type\" to the dict"):
                    presets.get_config(*case, **override(foreign))
        else:  # a fixed class: the dict cannot describe another architecture
            rebuilt = getattr(presets.get_config(*case, **override(fields)), key)
            assert type(rebuilt) is type(sub) and rebuilt.to_dict() == sub.to_dict()


def _fixed_class_sub_configs(config) -> list[str]:
    return [key for key in type(config).sub_configs_defaults if not _chosen_by_model_type(config, key)]


@pytest.mark.parametrize("case", [c for c in TINY_CASES if _fixed_class_sub_configs(_config(c))], ids=case_id)
def test_a_fixed_class_sub_config_naming_another_model_type_is_refused(case):
    config = _config(case)
    for key in _fixed_class_sub_configs(config):
        fields = {**getattr(config, key).to_dict(), "model_type": "bert"}
        with pytest.raises(ValueError, match=rf"{key} names model_type 'bert', but this family's {key} is always a"):
            presets.get_config(*case, **{key: fields})


@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sub_config_sizes_are_refused(case, value):
    config = _config(case)
    tried = 0
    for where, (sub, override) in _sub_configs(config).items():
        for size in SUB_CONFIG_SIZES:
            stored = sub.attribute_map.get(size, size)
            if stored not in sub.to_dict():
                continue
            tried += 1
            pattern = rf"{re.escape(where)}\.{stored}.* is {value}, but it must be a positive integer"
            with pytest.raises(ValueError, match=pattern):
                presets.get_config(*case, **override({**sub.to_dict(), stored: value}))
    assert tried >= 6  # text and vision configs at least: width, depth, heads (+ vocabulary)


def test_a_sub_config_field_of_the_wrong_type_names_the_sub_config(case):
    config = _config(case)
    tried = 0
    for where, (sub, override) in _sub_configs(config).items():
        stored = sub.attribute_map.get("num_hidden_layers", "num_hidden_layers")
        if stored not in sub.to_dict():
            continue
        tried += 1
        with pytest.raises(TypeError, match=rf"{re.escape(where)} \(\w+\): .*'{stored}'.* got str"):
            presets.get_config(*case, **override({**sub.to_dict(), stored: "2"}))
    assert tried >= 2


# ----- saving onto a file -------------------------------------------------------------------------------------------
def _a_file(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    target.write_text("keep me")
    return target


def test_saving_a_model_onto_a_file_raises_and_keeps_the_file(case, tmp_path):
    model, _ = build(case)
    target = _a_file(tmp_path)
    with pytest.raises(FileExistsError, match=rf"cannot save the model to '{target}': it is an existing file"):
        model.save_pretrained(target)
    with pytest.raises(FileExistsError, match=rf"cannot save the config to '{target}'"):
        model.config.save_pretrained(str(target))
    assert target.read_text() == "keep me"


def test_saving_a_processor_onto_a_file_raises_and_keeps_the_file(case, tmp_path):
    _, processor = build(case)
    target = _a_file(tmp_path)
    with pytest.raises(FileExistsError, match=str(target)):
        processor.save_pretrained(target)
    assert target.read_text() == "keep me"


# ----- the presets say what they build --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in TINY_CASES if presets.get_config(*c).is_encoder_decoder], ids=case_id)
def test_encoder_decoder_presets_say_whether_their_head_is_tied(case):
    family = case[0]
    for preset in presets.preset_names(family):
        config = presets.get_config(family, preset)
        if not config.is_encoder_decoder:
            continue
        doc = presets.PRESETS[type(config)].get(preset).__doc__.lower()
        assert ("untied" in doc) == (not config.tie_word_embeddings), (preset, doc)
        if preset.startswith("tiny"):
            model, _ = build((family, preset))
            tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
            assert tied == config.tie_word_embeddings and "tied" in doc, preset
