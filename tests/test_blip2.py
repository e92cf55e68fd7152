"""The Q-Former families (BLIP-2, MiniGPT-4 preset, InstructBLIP) against transformers' reference classes.

Tiny random transformers ``Blip2ForConditionalGeneration`` (OPT and Llama LMs) and
``InstructBlipForConditionalGeneration`` references are built here, saved with transformers' own processors and
converted with ``convert_blip2`` / ``convert_instructblip``. The converted directory loads with the Auto classes;
its processor's outputs equal transformers' (single prompts and right-padded batches), logits agree to 1e-5 in
fp32 and greedy generation is identical. Also: the recipes (BLIP-2 / InstructBLIP / MiniGPT-4 stages), the
paper-size presets and the processor's and model's errors on bad input.
"""

from __future__ import annotations

import inspect

import re

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

import vlmzoo
from vlmzoo import presets
from vlmzoo.cli import main as cli_main
from vlmzoo.conversion_scripts import convert_blip2, convert_instructblip
from vlmzoo.training import recipe_learning_rate

from helpers import make_image

SUMMARY = re.compile(r"^converted (\d+) tensors, (\d+) unused, (\d+) missing$", re.MULTILINE)
PROMPTS = ["Question: what color is the shape? Answer:", "Describe the image."]
PARITY_ATOL = 1e-5


def _reference_tokenizer(padding_side: str) -> PreTrainedTokenizerFast:
    """The tiny BPE without an ``image_token`` attribute: transformers' processors then add ``<image>`` themselves
    (it is already in the vocabulary, so its id stays)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(presets._tiny_tokenizer_json(512)),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side=padding_side,
    )  # fmt: skip


def _randomise_queries(model) -> None:
    # transformers initialises query_tokens to zeros, which would hide a mis-mapped tensor
    with torch.no_grad():
        model.query_tokens.normal_(0, 0.5)
        if model.config.text_config.is_encoder_decoder:
            # T5's initialisation makes a tiny model's argmax one constant token: greedy generation would prove nothing
            for name, parameter in model.language_model.named_parameters():
                if "layer_norm" not in name:
                    parameter.normal_(0, 0.3)
            # Flan-T5 (T5 v1.1) stores its head apart from the embeddings; transformers 5.24 ties T5 by default
            language_model = model.language_model
            language_model.lm_head.weight = torch.nn.Parameter(torch.randn_like(language_model.lm_head.weight) * 0.3)


def _save_reference(family: str, preset: str, directory):
    """A tiny random transformers reference + its processor saved in ``directory``; returns both."""
    zoo = presets.get_config(family, preset)
    torch.manual_seed(0)
    sub_configs = dict(
        vision_config=zoo.vision_config.to_dict(),
        qformer_config=zoo.qformer_config.to_dict(),
        text_config=zoo.text_config.to_dict(),
        num_query_tokens=zoo.num_query_tokens,
        image_token_index=zoo.image_token_id,
    )
    image_processor = BlipImageProcessorPil(size={"height": zoo.vision_config.image_size, "width": zoo.vision_config.image_size})
    if family == "blip2":
        model = Blip2ForConditionalGeneration(Blip2Config(**sub_configs)).eval()
        processor = Blip2Processor(image_processor, _reference_tokenizer("right"), num_query_tokens=zoo.num_query_tokens)
    else:
        model = InstructBlipForConditionalGeneration(InstructBlipConfig(**sub_configs)).eval()
        processor = InstructBlipProcessor(
            image_processor, _reference_tokenizer("right"), _reference_tokenizer("right"),
            num_query_tokens=zoo.num_query_tokens,
        )  # fmt: skip
    _randomise_queries(model)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


CONVERTERS = {"blip2": convert_blip2, "instructblip": convert_instructblip}
PARITY_CASES = [
    ("blip2", "tiny"),
    ("blip2", "tiny-llama"),
    ("blip2", "tiny-t5"),
    ("instructblip", "tiny"),
    ("instructblip", "tiny-t5"),
]


@pytest.fixture(scope="module", params=PARITY_CASES, ids=lambda case: "-".join(case))
def converted(request, tmp_path_factory):
    family, preset = request.param
    source, output = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("converted") / "out"
    reference, reference_processor = _save_reference(family, preset, source)
    return family, reference, reference_processor, source, output


def _inputs(processor, images, texts, **kwargs):
    return processor(images=images, text=texts, return_tensors="pt", **kwargs)


def test_hf_conversion_matches_transformers(converted, capsys):
    family, reference, reference_processor, source, output = converted
    assert CONVERTERS[family].main(["--source", "hf", "--input", str(source), "--output", str(output)]) == 0
    summary = SUMMARY.search(capsys.readouterr().out)
    assert summary and summary.group(2, 3) == ("0", "0")
    model = AutoModelForImageTextToText.from_pretrained(output).eval()
    processor = AutoProcessor.from_pretrained(output)
    assert type(model) is vlmzoo.get_family(family).for_generation_class
    assert type(processor) is vlmzoo.get_family(family).processor_class
    # every tensor of the checkpoint is converted (the tied ones are not stored)
    with safe_open(source / "model.safetensors", "pt") as stored:
        assert int(summary.group(1)) == len(list(stored.keys()))
    if model.config.is_encoder_decoder:  # Flan-T5's head, stored apart with its own values, stays its own
        assert not model.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        torch.testing.assert_close(model.lm_head.weight, reference.language_model.lm_head.weight, rtol=0, atol=0)

    images = [make_image(80, 48, seed=1), make_image(40, 100, seed=2)]
    # processor parity: each prompt alone, and a right-padded batch (transformers' layout)
    cases = [([images[0]], PROMPTS[:1], {}), (images, PROMPTS, {"padding": True, "padding_side": "right"})]
    for case_images, texts, kwargs in cases:
        ours = _inputs(processor, case_images, texts, **kwargs)
        theirs = _inputs(reference_processor, case_images, texts, **kwargs)
        assert sorted(ours) == sorted(theirs)
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)

    batch = _inputs(processor, images, PROMPTS, padding=True, padding_side="right")
    if model.config.is_encoder_decoder:
        # T5: the prompt is encoded; the logits (and the loss) are the decoder's, over a target given as labels
        labels = torch.tensor([[21, 22, 23, 24, 1], [31, 32, 33, -100, -100]])
        with torch.no_grad():
            expected, ours = reference(**batch, labels=labels), model(**batch, labels=labels)
        mask = torch.ones(labels.shape, dtype=torch.bool)
        torch.testing.assert_close(ours.loss, expected.loss, rtol=0, atol=PARITY_ATOL)
        expected, logits = expected.logits, ours.logits
    else:
        with torch.no_grad():
            expected = reference(**batch).logits
            logits = model(**batch).logits
        mask = batch["attention_mask"].bool()
    assert logits.shape == expected.shape
    difference = (logits - expected)[mask].abs().max().item()
    assert difference <= PARITY_ATOL, difference
    print(f"{family}: max |dlogit| = {difference:.2e}")

    single = _inputs(processor, images[:1], PROMPTS[:1])
    generate = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    theirs = reference.generate(**single, **generate)
    ours = model.generate(**single, **generate)
    # a decoder-only LM returns the prompt too; T5 the decoder start token and the answer
    prefix = 1 if model.config.is_encoder_decoder else single["input_ids"].shape[1]
    assert ours.shape == (1, prefix + 6)
    assert len(set(ours[0, prefix:].tolist())) > 1  # the answer is not one token repeated
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # beam search over the padded batch, too
    beams = dict(generate, num_beams=2)
    torch.testing.assert_close(model.generate(**batch, **beams), reference.generate(**batch, **beams), rtol=0, atol=0)


def test_cli_converts_blip2(tmp_path, capsys):
    source = tmp_path / "reference"
    _save_reference("blip2", "tiny", source)
    assert cli_main(["convert", "blip2", "--source", "hf", "--input", str(source), "--output", str(tmp_path / "out")]) == 0
    assert "converted" in capsys.readouterr().out
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path / "out")) is vlmzoo.ZooBlip2ForConditionalGeneration


def test_converting_the_wrong_family_exits_2(tmp_path, capsys):
    source = tmp_path / "reference"
    _save_reference("blip2", "tiny", source)
    code = convert_instructblip.main(["--source", "hf", "--input", str(source), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "converts model_type 'instructblip', got 'blip-2'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----- the model -------------------------------------------------------------------------------------------
def test_query_tokens_and_projector_are_components_that_train_under_lora():
    from peft import get_peft_model

    from vlmzoo.training import lora_config

    model = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny"))
    assert isinstance(model.model.query_tokens, vlmzoo.modeling.blocks.LearnedTokens)
    parts = model.component_parts()
    assert model.model.query_tokens in parts["qformer"] and model.model.multi_modal_projector in parts["multi_modal_projector"]
    model.set_training_stage("align")
    peft_model = get_peft_model(model, lora_config(model, r=2, stage="align"))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert any("query_tokens" in name for name in trainable)
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)


def test_output_embeddings_tie_to_opt_decoder_embeddings():
    model = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny"))
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.language_model.decoder.embed_tokens.weight


def test_recipes_follow_the_papers():
    blip2 = presets.get_config("blip2", "tiny")
    assert blip2.training_stages["qformer_pretrain"] == ["qformer"]
    assert blip2.training_stages["align"] == ["qformer", "multi_modal_projector"]  # BLIP-2 stage 2: LLM frozen
    model = vlmzoo.ZooBlip2ForConditionalGeneration(blip2)
    assert recipe_learning_rate(model, "align") == 1e-4 and recipe_learning_rate(model, "instruct") == 1e-5
    minigpt4 = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny-minigpt4"))
    counts = minigpt4.set_training_stage("align")
    projector = sum(p.numel() for p in minigpt4.multi_modal_projector.parameters())
    assert counts == {"vision_tower": 0, "qformer": 0, "multi_modal_projector": projector, "language_model": 0}
    assert minigpt4.config.text_config.model_type == "llama"
    # MiniGPT-4's own rates (stage 1 at 1e-4, stage 2 at 3e-5) travel with the config, through save and load
    assert recipe_learning_rate(minigpt4, "align") == 1e-4 and recipe_learning_rate(minigpt4, "instruct") == 3e-5
    reloaded = type(minigpt4.config).from_dict(minigpt4.config.to_dict())
    assert reloaded.recipe_learning_rates == minigpt4.config.recipe_learning_rates
    with pytest.raises(ValueError, match="names stage 'stage3', which is not a training stage"):
        presets.get_config("blip2", "tiny", recipe_learning_rates={"stage3": 1e-4})
    with pytest.raises(ValueError, match="must be a positive number, got -0.1"):
        presets.get_config("blip2", "tiny", recipe_learning_rates={"align": -0.1})


@pytest.mark.parametrize(
    "family, preset, layers, width",
    [("blip2", "blip2-opt-2.7b", 32, 2560), ("blip2", "minigpt4-vicuna-13b", 40, 5120),
     ("instructblip", "instructblip-vicuna-7b", 32, 4096)],
)  # fmt: skip
def test_paper_size_presets(family, preset, layers, width):
    config = presets.get_config(family, preset)
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1408, 39)  # EVA ViT-g/14
    assert config.qformer_config.encoder_hidden_size == 1408 and config.num_query_tokens == 32
    assert (config.text_config.num_hidden_layers, config.text_config.hidden_size) == (layers, width)


def test_instructblip_needs_the_instruction_for_the_qformer():
    model = vlmzoo.ZooInstructBlipForConditionalGeneration(presets.get_config("instructblip", "tiny")).eval()
    pixels = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="pass qformer_input_ids"):
        model.get_image_features(pixels)
    with pytest.raises(ValueError, match=r"one row per image \(1\)"):
        model.get_image_features(pixels, qformer_input_ids=torch.ones(2, 3, dtype=torch.long))


def test_bad_pixels_raise():
    model = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny")).eval()
    with pytest.raises(ValueError, match=r"must be 32x32 images for this vision tower, got \(48, 48\)"):
        model.get_image_features(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"must be \(num_images, 3, height, width\), got \(3, 32, 32\)"):
        model.get_image_features(torch.zeros(3, 32, 32))


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="num_query_tokens must be a positive integer"):
        presets.get_config("blip2", "tiny", num_query_tokens=0)
    # encoder-decoder LMs: the T5 family only (a plain linear head), and only in the families that take one
    with pytest.raises(ValueError, match=r"'bart' encoder-decoder language model; ZooBlip2Config takes decoder-only language models and the encoder-decoders \['t5'"):
        presets.get_config("blip2", "tiny", text_config={"model_type": "bart", "vocab_size": 600})
    with pytest.raises(ValueError, match="ZooLlavaConfig takes decoder-only language models and no encoder-decoder"):
        presets.get_config("llava", "tiny", text_config={"model_type": "t5", "vocab_size": 600})
    assert presets.get_config("blip2", "tiny-t5").is_encoder_decoder
    assert not presets.get_config("blip2", "tiny-t5").use_decoder_only_language_model


# ----- the processor ----------------------------------------------------------------------------------------
def test_processor_puts_the_queries_before_the_prompt_and_pads_outside_them():
    processor = presets.get_processor("blip2", "tiny")
    batch = processor(images=[make_image(40, 40), make_image(50, 30)], text=PROMPTS, return_tensors="pt", padding=True)
    queries = processor.num_query_tokens
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        start = int((mask == 0).sum())  # left padding first, then the placeholders, then BOS
        assert (row[start : start + queries] == processor.image_token_id).all()
        assert (row[:start] == processor.tokenizer.pad_token_id).all()
        assert row[start + queries] != processor.image_token_id


def test_processor_errors():
    processor = presets.get_processor("blip2", "tiny")
    image = make_image(40, 40)
    with pytest.raises(ValueError, match=r"got 2 images for 1 prompts: the number of images \(2\) must match the number of prompts"):
        processor(images=[image, image], text=["Describe."])
    with pytest.raises(ValueError, match="remove it from the text"):
        processor(images=[image], text=["<image> Describe."])
    with pytest.raises(TypeError, match="text must be a string"):
        processor(images=[image], text=[3])
    with pytest.raises(ValueError, match="pass images, text or both"):
        processor()
    with pytest.raises(ValueError, match="needs the Q-Former's tokenizer"):
        vlmzoo.ZooInstructBlipProcessor(processor.image_processor, processor.tokenizer, None)


def test_chat_template_writes_no_image_placeholder():
    processor = presets.get_processor("instructblip", "tiny")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == "<s>USER: What is it?\nASSISTANT:"
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": make_image(40, 40)}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    )  # fmt: skip
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == processor.num_query_tokens
    assert {"qformer_input_ids", "qformer_attention_mask", "pixel_values"} <= set(inputs)


# ----- the demo -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, preset", [("blip2", "tiny"), ("instructblip", "tiny"), ("blip2", "tiny-t5"), ("instructblip", "tiny-t5")]
)
def test_quick_demo_runs_both_stages(family, preset, tmp_path):
    from vlmzoo import demo

    args = demo.parse_args(
        ["--quick", "--family", family, "--preset", preset, "--output-dir", str(tmp_path), "--num-eval", "6"]
    )
    result = demo.run_demo(args)
    assert [stage.name for stage in result.stages] == ["align", "instruct"]
    align, instruct = (stage.trainable for stage in result.stages)
    assert align["language_model"] == 0 and align["qformer"] > 0
    assert instruct["language_model"] > 0  # the demo's override: its tiny LM starts random
    assert type(result.reloaded_model) is vlmzoo.get_family(family).for_generation_class


def test_image_token_id_defaults_to_none_as_transformers_and_presets_set_it():
    from vlmzoo.configuration.configuration_blip2 import ZooBlip2Config, ZooInstructBlipConfig

    # as Blip2Config.image_token_index: the id belongs to the tokenizer, so a bare config has none
    assert ZooBlip2Config().image_token_id is None and ZooInstructBlipConfig().image_token_id is None
    for family in ("blip2", "instructblip"):
        for preset in presets.preset_names(family):
            config = presets.get_config(family, preset)
            assert 0 <= config.image_token_id < config.text_config.vocab_size, (family, preset)
    # without an id the images have nowhere to go: a clear error, not a silent text-only answer
    config = presets.get_config("blip2", "tiny", image_token_id=None)
    model = vlmzoo.ZooBlip2ForConditionalGeneration(config).eval()
    pixels = torch.zeros(1, 3, config.vision_config.image_size, config.vision_config.image_size)
    with pytest.raises(ValueError, match="config.image_token_id is not set"):
        model(input_ids=torch.tensor([[5, 6]]), pixel_values=pixels)



def test_config_carries_transformers_blip2_fields():
    from vlmzoo.configuration.configuration_blip2 import ZooBlip2Config

    config = ZooBlip2Config(image_text_hidden_size=128)
    assert config.use_decoder_only_language_model is True
    assert ZooBlip2Config().image_text_hidden_size == 256
    assert ZooBlip2Config.from_dict(config.to_dict()).image_text_hidden_size == 128


def test_decoder_inputs_are_refused_by_a_decoder_only_language_model():
    model = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny")).eval()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match=r"\['decoder_input_ids'\] are inputs of an encoder-decoder language model"):
        model(input_ids=ids, decoder_input_ids=ids)


def test_t5_generates_from_embeddings_and_from_text_alone():
    """generate() with an encoder-decoder LM: the prompt as embeddings gives what the ids give; no image is needed."""
    config = presets.get_config("blip2", "tiny-t5")
    processor = presets.get_processor("blip2", "tiny-t5", config)
    torch.manual_seed(0)
    model = vlmzoo.ZooBlip2ForConditionalGeneration(config).eval()
    batch = processor(images=[make_image(40, 30, seed=3)], text=["What is it?"], return_tensors="pt")
    options = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    from_ids = model.generate(**batch, **options)
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"]).pooler_output[0]
        embeds = model.get_input_embeddings()(batch["input_ids"])
        embeds[batch["input_ids"] == config.image_token_id] = features
    from_embeds = model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **options)
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=0)
    assert from_ids[0, 0].item() == config.text_config.decoder_start_token_id
    text_only = processor(text=["What is it?"], return_tensors="pt")
    assert model.generate(**text_only, **options).shape == (1, 5)


@pytest.mark.parametrize("preset", ["tiny", "tiny-t5"])
def test_float16_keeps_the_qformer_in_float32_and_matches_transformers(preset, tmp_path):
    """``_keep_in_fp32_modules`` as transformers' BLIP-2: a float16 load keeps the Q-Former and its queries in
    float32, and the half-precision logits equal the reference's loaded the same way."""
    _save_reference("blip2", preset, tmp_path / "source")
    assert convert_blip2.main(["--source", "hf", "--input", str(tmp_path / "source"), "--output", str(tmp_path / "out")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float16).eval()
    reference = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "source", dtype=torch.float16).eval()
    kept = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    # ... and the language model's own float32 modules (T5's feed-forward output `wo`), as in the reference
    own = model.model.language_model._keep_in_fp32_modules or []
    expected = {name for name, _ in model.named_parameters()
                if name.startswith(("model.qformer.", "model.query_tokens.")) or set(name.split(".")) & set(own)}
    assert kept == expected
    assert model.lm_head.weight.dtype == torch.float16
    batch = _inputs(AutoProcessor.from_pretrained(tmp_path / "out"), [make_image(80, 48, seed=1)], PROMPTS[:1])
    batch["pixel_values"] = batch["pixel_values"].half()
    if model.config.is_encoder_decoder:
        batch["labels"] = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=0)


def test_native_call_forms_and_names():
    """transformers' Q-Former models take pixel_values first, positionally, and call the tower vision_model."""
    for family, order in (("blip2", ("pixel_values", "input_ids", "attention_mask")),
                          ("instructblip", ("pixel_values", "qformer_input_ids", "qformer_attention_mask",
                                            "input_ids", "attention_mask"))):  # fmt: skip
        config = presets.get_config(family, "tiny")
        processor = presets.get_processor(family, "tiny", config)
        model = vlmzoo.get_family(family).for_generation_class(config).eval()
        assert model.vision_model is model.model.vision_tower
        batch = processor(images=[make_image(40, 30)], text=["What is it?"], return_tensors="pt")
        with torch.no_grad():
            by_keyword = model(**batch).logits
            by_position = model(*(batch[name] for name in order)).logits
        torch.testing.assert_close(by_position, by_keyword, rtol=0, atol=0)
        with pytest.raises(TypeError, match="got multiple values for argument 'input_ids'"):
            model(*(batch[name] for name in order), input_ids=batch["input_ids"])
        # the native order is the only positional one: token ids in the pixels' place are refused, naming the cause
        assert model.main_input_name == "pixel_values" == next(iter(inspect.signature(model.forward).parameters))
        rest = {key: value for key, value in batch.items() if key not in ("input_ids", "pixel_values")}
        with pytest.raises(TypeError, match="pixel_values must be floating point"):
            model(batch["input_ids"], **rest)


def test_tensor_parallel_plan_shards_a_tied_head_only_with_its_embedding():
    opt = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny"))  # OPT: no TP plan of its own
    assert opt.config.tie_word_embeddings and "lm_head" not in (opt._tp_plan or {})
    llama = vlmzoo.ZooBlip2ForConditionalGeneration(presets.get_config("blip2", "tiny-llama"))
    assert llama._tp_plan.get("lm_head") == "colwise_gather_output"


def test_t5_refuses_position_ids():
    config = presets.get_config("blip2", "tiny-t5")
    model = vlmzoo.ZooBlip2ForConditionalGeneration(config).eval()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="position_ids are not an input of an encoder-decoder language model"):
        model(input_ids=ids, position_ids=torch.arange(3)[None])


# ----- training with an encoder-decoder LM -------------------------------------------------------------------
def test_collator_gives_an_encoder_decoder_the_prompt_as_input_and_the_last_reply_as_labels():
    from _synthetic import conversation, make_conversations, reply_texts

    from vlmzoo.training import IGNORE_INDEX, VLMDataCollator

    processor = presets.get_processor("blip2", "tiny-t5")
    tokenizer = processor.tokenizer
    examples = make_conversations(2, seed=4)
    causal = VLMDataCollator(processor)(examples)
    batch = VLMDataCollator(processor, encoder_decoder=True)(examples)
    for row, example in enumerate(examples):
        labels = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
        assert labels[-1] == tokenizer.eos_token_id
        assert reply_texts(example)[0].strip() in tokenizer.decode(labels, skip_special_tokens=True)
        # the encoder's input is the causal row up to where the reply starts, padded on the right
        reply_start = int((causal["labels"][row] != IGNORE_INDEX).nonzero()[0, 0])
        length = int(batch["attention_mask"][row].sum())
        assert length == reply_start
        torch.testing.assert_close(batch["input_ids"][row, :length], causal["input_ids"][row, :reply_start])
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 2 * presets.get_config("blip2", "tiny-t5").num_query_tokens
    # a multi-turn chat: the earlier reply is context for the encoder, only the last is the target
    chat = conversation(make_image(30, 30), "What color?", "red")
    chat["messages"] += [{"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]  # fmt: skip
    batch = VLMDataCollator(processor, encoder_decoder=True)([chat])
    assert "red" in tokenizer.decode(batch["input_ids"][0]) and "square" not in tokenizer.decode(batch["input_ids"][0])
    assert "a square" in tokenizer.decode(batch["labels"][0], skip_special_tokens=True)


def test_trainer_fine_tunes_blip2_with_flan_t5_in_the_align_stage(tmp_path):
    from _synthetic import make_conversations
    from transformers import Trainer, TrainingArguments

    from vlmzoo.training import VLMDataCollator

    config = presets.get_config("blip2", "tiny-t5")
    processor = presets.get_processor("blip2", "tiny-t5", config)
    torch.manual_seed(0)
    model = vlmzoo.ZooBlip2ForConditionalGeneration(config)
    model.set_training_stage("align")  # Q-Former and projection; the ViT and Flan-T5 frozen
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("model.language_model.")}
    examples = make_conversations(8, seed=1)
    collator = VLMDataCollator(processor, encoder_decoder=True)
    batch = collator(examples)
    with torch.no_grad():
        before = model(**batch).loss.item()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=3e-3,
        lr_scheduler_type="constant", report_to=[], save_strategy="no", remove_unused_columns=False, use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=examples, data_collator=collator).train()
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)


def test_collator_gives_the_qformer_the_instruction_never_the_answer():
    """InstructBLIP trains on what it sees at inference: the Q-Former reads the prompt, not the reply it learns."""
    from _synthetic import make_conversations

    from vlmzoo.training import VLMDataCollator

    processor = presets.get_processor("instructblip", "tiny")
    examples = make_conversations(3, seed=3)
    batch = VLMDataCollator(processor)(examples)
    for row, example in enumerate(examples):
        prompt_messages = example["messages"][:-1]
        inference = processor.apply_chat_template(
            [prompt_messages], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        length = int(batch["qformer_attention_mask"][row].sum())
        assert batch["qformer_input_ids"][row, :length].tolist() == inference["qformer_input_ids"][0].tolist()
        answer = example["messages"][-1]["content"][0]["text"]
        assert answer not in processor.qformer_tokenizer.decode(batch["qformer_input_ids"][row])
    # the language model still reads the whole conversation, and learns the reply
    assert (batch["labels"] != -100).any(dim=1).all()


@pytest.mark.parametrize("family, preset", [("blip2", "tiny"), ("blip2", "tiny-t5"), ("instructblip", "tiny")])
def test_generate_takes_transformers_call_forms(family, preset, tmp_path):
    """As transformers' Q-Former models: generate(pixel_values, ...) positionally, and an image without a prompt."""
    reference, reference_processor = _save_reference(family, preset, tmp_path / "source")
    assert CONVERTERS[family].main(["--source", "hf", "--input", str(tmp_path / "source"), "--output", str(tmp_path / "out")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    batch = _inputs(reference_processor, [make_image(50, 40, seed=6)], PROMPTS[:1])
    options = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    order = [name for name in model.native_generate_order if name in batch]
    positional = [batch[name] for name in order]
    torch.testing.assert_close(model.generate(*positional, **options), reference.generate(*positional, **options))
    if family == "blip2":  # transformers' InstructBLIP needs the instruction
        pixels_only = model.generate(batch["pixel_values"], **options)
        if model.config.is_encoder_decoder:
            # transformers' BLIP-2 appends the LM's BOS, which T5 has not (it raises); vlmzoo reads the queries alone
            queries = torch.full((1, model.config.num_query_tokens), model.config.image_token_id)
            expected = model.generate(pixel_values=batch["pixel_values"], input_ids=queries, **options)
        else:
            expected = reference.generate(batch["pixel_values"], **options)
        torch.testing.assert_close(pixels_only, expected)


@pytest.mark.parametrize("preset", ["tiny", "tiny-t5"])
def test_qformer_and_text_features_equal_transformers(preset, tmp_path):
    """transformers' Blip2Model feature API on the base model: the Q-Former's outputs before the projector, and the
    language model's (T5: its encoder's) states over text alone, equal to the reference's on converted weights."""
    reference, processor = _save_reference("blip2", preset, tmp_path / "source")
    assert CONVERTERS["blip2"].main(["--source", "hf", "--input", str(tmp_path / "source"), "--output", str(tmp_path / "out")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    batch = _inputs(processor, [make_image(50, 40, seed=6)], PROMPTS[:1])
    with torch.no_grad():
        expected = reference.get_image_features(batch["pixel_values"]).qformer_outputs.last_hidden_state
        torch.testing.assert_close(model.model.get_qformer_features(batch["pixel_values"]), expected)
        language_model = reference.language_model
        encoder = language_model.get_encoder() if model.config.is_encoder_decoder else language_model.model
        text = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        expected = encoder(**text).last_hidden_state
        torch.testing.assert_close(model.model.get_text_features(**text).last_hidden_state, expected)
        # the base model's get_image_features is Blip2Model's (the tower's outputs); the generation class's is the
        # projected queries, as Blip2ForConditionalGeneration's
        tower = reference.vision_model(batch["pixel_values"])
        ours = model.model.get_image_features(batch["pixel_values"])
        torch.testing.assert_close(ours.pooler_output, tower.pooler_output)
        torch.testing.assert_close(ours.last_hidden_state, tower.last_hidden_state)
        projected = reference.get_image_features(batch["pixel_values"]).pooler_output
        torch.testing.assert_close(torch.stack(model.get_image_features(batch["pixel_values"]).pooler_output), projected)
    assert model.model.vision_model is model.model.vision_tower
