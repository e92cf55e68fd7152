"""One room per family: what a family declares in its own files, and how shared code reads it (docs/adding_a_family.md).

Exports derive from the family table; presets are declared beside each config class; the demo's settings come
from the config (``demo_overrides``); extra tokenizers from the processor class (``extra_tokenizers``); the
collator's prompt hook (``prompt_only_inputs``) is on the processor base every family inherits; the
encoder-decoder language models a family takes are its config's (``encoder_decoder_language_models``).
"""

from __future__ import annotations

import jinja2
import pytest
import torch

import vlmzoo
from vlmzoo import demo, presets
from vlmzoo.auto import FAMILY_TABLE
from vlmzoo.configuration.configuration_base import ZooVLMConfig
from vlmzoo.conversion_scripts.convert_blip2 import hf_processor
from vlmzoo.conversion_scripts.convert_instructblip import INSTRUCTBLIP
from vlmzoo.conversion_scripts.errors import ConversionError
from vlmzoo.processing.processing_common import ZooProcessorMixin
from vlmzoo.synthetic import make_examples
from vlmzoo.tiny_tokenizer import build_tiny_tokenizer
from vlmzoo.training import VLMDataCollator

FAMILY_KEYS = [family.key for family in FAMILY_TABLE]

# what `vlmzoo.__all__` held before the exports were derived from the table (each must stay importable)
EXPORTED_BEFORE = [
    "FAMILIES", "AutoModelForVision2Seq", "get_family", "ZooVLMConfig", "ZooVLMModel", "ZooVLMForConditionalGeneration",
    "ZooLlavaConfig", "ZooLlavaModel", "ZooLlavaPreTrainedModel", "ZooLlavaForConditionalGeneration",
    "ZooLlavaProcessor", "ZooFixedResImageProcessor", "ZooAnyResImageProcessor", "ZooResizeImageProcessor",
    "ZooBlip2Config", "ZooBlip2Model", "ZooBlip2PreTrainedModel", "ZooBlip2ForConditionalGeneration",
    "ZooBlip2ForQFormerPretraining", "ZooBlip2Processor", "ZooInstructBlipConfig", "ZooInstructBlipModel",
    "ZooInstructBlipPreTrainedModel", "ZooInstructBlipForConditionalGeneration", "ZooInstructBlipProcessor",
]  # fmt: skip


# ----- exports ----------------------------------------------------------------------------------------------
def test_every_name_exported_before_is_still_exported_and_importable():
    assert set(EXPORTED_BEFORE) <= set(vlmzoo.__all__)
    namespace: dict = {}
    exec(f"from vlmzoo import {', '.join(EXPORTED_BEFORE)}", namespace)
    assert all(namespace[name] is getattr(vlmzoo, name) for name in EXPORTED_BEFORE)


def test_exports_are_the_family_tables_public_classes():
    for family in FAMILY_TABLE:
        for public_class in family.public_classes:
            assert public_class.__name__ in vlmzoo.__all__
            assert getattr(vlmzoo, public_class.__name__) is public_class
    # a class two families share (the resize image processor) is exported once
    assert len(vlmzoo.__all__) == len(set(vlmzoo.__all__))


# ----- presets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_each_family_declares_its_presets_beside_its_config_class(family):
    config_class = vlmzoo.get_family(family).config_class
    names = presets.preset_names(family)
    assert "tiny" in names and names == sorted(names)
    for name in names:
        assert presets.PRESETS[config_class].get(name).__module__ == config_class.__module__
        assert type(presets.get_config(family, name)) is config_class


def test_presets_belong_to_their_class_only():
    # ZooInstructBlipConfig subclasses ZooBlip2Config; MiniGPT-4 is a preset of BLIP-2 alone
    assert issubclass(vlmzoo.ZooInstructBlipConfig, vlmzoo.ZooBlip2Config)
    assert "tiny-minigpt4" in presets.preset_names("blip2")
    assert "tiny-minigpt4" not in presets.preset_names("instructblip")
    with pytest.raises(ValueError, match="unknown preset 'tiny-minigpt4' for family 'instructblip'; valid presets"):
        presets.get_config("instructblip", "tiny-minigpt4")


def test_overrides_go_on_top_of_the_preset():
    config = presets.get_config("llava", "tiny", projector_type="linear")
    assert config.projector_type == "linear" and config.vision_config.hidden_size == 64


def test_register_preset_refuses_duplicates_and_a_missing_config_class():
    class Throwaway:
        pass

    try:
        presets.register_preset(Throwaway, "tiny")(dict)
        with pytest.raises(ValueError, match="Throwaway preset 'tiny' is already registered"):
            presets.register_preset(Throwaway, "tiny")(dict)
    finally:
        presets.PRESETS.pop(Throwaway, None)
    with pytest.raises(TypeError, match="takes the family's config class first"):
        presets.register_preset("llava", "tiny")
    with pytest.raises(TypeError, match="a preset name is a non-empty string"):
        presets.register_preset(Throwaway, "")


# ----- demo settings ----------------------------------------------------------------------------------------
def test_the_demo_defaults_to_the_tables_first_family():
    assert demo.parse_args([]).family == FAMILY_TABLE[0].key


def test_demo_settings_come_from_the_family_config():
    config = presets.get_config("blip2", "tiny")
    overrides, why = config.demo_overrides()
    assert overrides["vision_config"]["image_size"] == 64 and "64 px" in why
    model, _, note = demo.build_demo_model("blip2")
    assert note == why
    assert model.config.vision_config.image_size == 64
    assert model.config.training_stages["instruct"] == ["qformer", "multi_modal_projector", "language_model"]
    # InstructBLIP inherits BLIP-2's settings
    assert presets.get_config("instructblip", "tiny").demo_overrides()[1] == why


def test_a_family_without_demo_settings_runs_as_is(monkeypatch):
    assert ZooVLMConfig.demo_overrides(presets.get_config("llava", "tiny")) == ({}, "")
    monkeypatch.setattr(vlmzoo.ZooLlavaConfig, "demo_overrides", ZooVLMConfig.demo_overrides)
    model, _, note = demo.build_demo_model("llava")
    assert note == "as is" and model.config.vision_config.hidden_size == 64  # the preset's width


# ----- extra tokenizers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_extra_tokenizers_are_processor_arguments_built_with_their_options(family):
    processor_class = vlmzoo.get_family(family).processor_class
    assert issubclass(processor_class, ZooProcessorMixin)
    assert set(processor_class.extra_tokenizers) <= set(processor_class.get_attributes()) - {"tokenizer"}
    processor = presets.get_processor(family, "tiny")
    for name, options in processor_class.extra_tokenizers.items():
        assert all(getattr(getattr(processor, name), option) == value for option, value in options.items())
    assert "extra_tokenizers" not in processor.to_dict()  # a class fact, never saved


def test_instructblip_declares_its_qformer_tokenizer():
    assert vlmzoo.ZooInstructBlipProcessor.extra_tokenizers == {"qformer_tokenizer": {"padding_side": "right"}}
    assert vlmzoo.ZooBlip2Processor.extra_tokenizers == {} and vlmzoo.ZooLlavaProcessor.extra_tokenizers == {}
    processor = presets.get_processor("instructblip", "tiny")
    assert processor.qformer_tokenizer.padding_side == "right" and processor.tokenizer.padding_side == "left"


@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_the_main_tiny_tokenizer_is_built_with_the_processor_class_options(family):
    processor_class = vlmzoo.get_family(family).processor_class
    processor = presets.get_processor(family, "tiny")
    expected = build_tiny_tokenizer(**processor_class.tiny_tokenizer_options)
    assert processor.tokenizer.get_vocab() == expected.get_vocab()
    assert processor.tokenizer.all_special_tokens == expected.all_special_tokens
    assert "tiny_tokenizer_options" not in processor.to_dict() and "chat_part_types" not in processor.to_dict()


def test_the_tiny_tokenizer_takes_a_family_special_tokens():
    tokenizer = build_tiny_tokenizer(special_tokens=("<pad>", "<|start|>", "<|end|>", "<|pic|>"),
                                     named_tokens={"image_token": "<|pic|>"}, bos_token=None, eos_token="<|end|>",
                                     chat_template="{{ messages[0]['content'] }}")  # fmt: skip
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<|start|>", "<|end|>", "<|pic|>")] == [0, 1, 2, 3]
    assert tokenizer.image_token == "<|pic|>" and tokenizer.eos_token_id == 2 and tokenizer.bos_token is None
    assert tokenizer.encode("a <|pic|> b").count(3) == 1
    assert build_tiny_tokenizer().convert_tokens_to_ids("<image>") == 3  # the default keeps its ids
    with pytest.raises(ValueError, match=r"lacks \['<\|pic\|>'\]"):
        build_tiny_tokenizer(special_tokens=("<pad>", "<s>", "</s>"), named_tokens={"image_token": "<|pic|>"})


def test_chat_part_types_decide_which_parts_the_conversation_check_takes(monkeypatch):
    from vlmzoo.processing.chat_templates import PART_TYPES

    assert ZooProcessorMixin.chat_part_types == PART_TYPES and "video" not in PART_TYPES
    processor = presets.get_processor("llava", "tiny")
    video = [{"role": "user", "content": [{"type": "video", "path": "clip.mp4"}, {"type": "text", "text": "Hi"}]}]
    with pytest.raises(ValueError, match=r"unknown type 'video'"):
        processor.apply_chat_template(video)
    monkeypatch.setattr(type(processor), "chat_part_types", PART_TYPES + ("video",))
    # the check lets it through; the LLaVA template's own guard (for text and image parts) still refuses it
    with pytest.raises(jinja2.exceptions.TemplateError, match=r"turn 0, part 0: a part is"):
        processor.apply_chat_template(video)


def test_the_converter_reads_each_extra_tokenizer_from_its_folder(tmp_path):
    config = presets.get_config("instructblip", "tiny")
    build_tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"has a tokenizer but no qformer_tokenizer/ \(ZooInstructBlipProcessor"):
        hf_processor(tmp_path, config, INSTRUCTBLIP, [])
    build_tiny_tokenizer(padding_side="right").save_pretrained(tmp_path / "qformer_tokenizer")
    processor = hf_processor(tmp_path, config, INSTRUCTBLIP, [])
    assert type(processor) is vlmzoo.ZooInstructBlipProcessor
    assert processor.qformer_tokenizer.padding_side == "right"


# ----- the collator's prompt hook ---------------------------------------------------------------------------
def test_the_prompt_hook_defaults_to_nothing():
    processor = presets.get_processor("llava", "tiny")
    assert processor.prompt_only_inputs(["USER: What color is it?\nASSISTANT:"]) == {}


def test_the_collator_calls_the_prompt_hook_of_any_processor():
    class RecordingProcessor(vlmzoo.ZooLlavaProcessor):
        seen: list[str] = []

        def prompt_only_inputs(self, prompts):
            type(self).seen = list(prompts)
            return {"prompt_characters": torch.tensor([len(prompt) for prompt in prompts])}

    config = presets.get_config("llava", "tiny")
    processor = RecordingProcessor.from_model_config(config, build_tiny_tokenizer())
    examples = make_examples(2, seed=5, image_size=64)
    batch = VLMDataCollator(processor)([{"messages": example.messages()} for example in examples])
    # the prompts as at inference: the question with the generation prompt, without the answer
    expected = [processor.apply_chat_template(example.messages(with_answer=False), add_generation_prompt=True)
                for example in examples]  # fmt: skip
    assert RecordingProcessor.seen == expected
    assert all(example.answer not in prompt for example, prompt in zip(examples, expected))
    assert torch.equal(batch["prompt_characters"], torch.tensor([len(prompt) for prompt in expected]))


def test_the_collator_refuses_a_processor_that_is_not_vlmzoos():
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(TypeError, match=f"VLMDataCollator takes a vlmzoo processor .*got {type(tokenizer).__name__}"):
        VLMDataCollator(tokenizer)


# ----- encoder-decoder language models ----------------------------------------------------------------------
def test_the_encoder_decoder_language_models_are_declared_by_the_family():
    assert vlmzoo.ZooBlip2Config.encoder_decoder_language_models == ("t5", "umt5")
    assert vlmzoo.ZooLlavaConfig.encoder_decoder_language_models == ()
    with pytest.raises(ValueError, match=r"'t5' encoder-decoder language model; ZooLlavaConfig takes decoder-only .* and no"):
        presets.get_config("llava", "tiny", text_config={"model_type": "t5", "vocab_size": 600})
    with pytest.raises(ValueError, match=r"'bart' encoder-decoder .*ZooBlip2Config .* the encoder-decoders \['t5', 'umt5'\]"):
        presets.get_config("blip2", "tiny", text_config={"model_type": "bart", "vocab_size": 600})
