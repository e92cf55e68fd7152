"""Builders shared by the tests: tiny models, processors, images and batches from the family table."""


from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

import vlmzoo
import zoo_test_families  # noqa: F401  (registers the in-test families before TINY_CASES is computed)
from vlmzoo import presets

ALL_TINY_CASES = [
    (family, preset)
    for family in vlmzoo.FAMILIES.keys()
    for preset in presets.preset_names(family)
    if preset.startswith("tiny")
]


def _one_per_family_and_lm_kind(cases) -> list:
    """The first tiny preset of each family for each kind of language model (decoder-only, encoder-decoder)."""
    chosen, seen = [], set()
    for family, preset in cases:
        kind = (family, presets.get_config(family, preset).is_encoder_decoder)
        if kind not in seen:
            seen.add(kind)
            chosen.append((family, preset))
    return chosen


# the common and bad-input suites: one tiny preset per family and LM kind (``tiny`` first), so the suite grows with
# the families, not with their variants; ``make test-thorough`` (VLMZOO_TEST_VARIANTS=1) runs every tiny preset
TEST_VARIANTS = os.environ.get("VLMZOO_TEST_VARIANTS", "0") == "1"
TINY_CASES = ALL_TINY_CASES if TEST_VARIANTS else _one_per_family_and_lm_kind(ALL_TINY_CASES)


def case_id(case) -> str:
    return f"{case[0]}-{case[1]}"


def make_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def user_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def build(case, seed: int = 0, **overrides):
    family, preset = case
    config = presets.get_config(family, preset, **overrides)
    processor = presets.get_processor(family, preset, config)
    torch.manual_seed(seed)
    model_class = vlmzoo.get_family(family).for_generation_class
    model = model_class(config).eval()
    return model, processor


def two_prompt_batch(processor):
    """Two prompts of different lengths and two images of different sizes, left padded."""
    images = [make_image(80, 48, seed=1), make_image(40, 100, seed=2)]
    texts = [user_prompt(processor, "What color is the shape?"), user_prompt(processor, "Where is it?")]
    return processor(images=images, text=texts, return_tensors="pt", padding=True), images, texts


def sub_models(model) -> dict[str, torch.nn.Module]:
    """The transformers models inside a vlmzoo model (towers, language model), by module name, outermost only."""
    from transformers import PreTrainedModel

    from vlmzoo.modeling.modeling_base import ZooPreTrainedModel

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, ZooPreTrainedModel):
            continue
        if isinstance(module, PreTrainedModel) and not any(name.startswith(f + ".") for f in found):
            found[name] = module
    return found


def component_prefixes(model) -> dict[str, list[str]]:
    """Component -> the qualified names of its modules / bare parameters in ``model``."""
    names = {id(module): name for name, module in model.named_modules()}
    names.update({id(parameter): name for name, parameter in model.named_parameters()})
    return {component: [names[id(part)] for part in parts] for component, parts in model.component_parts().items()}


def vlmzoo_owned_prefixes(model) -> list[str]:
    """Prefixes of the components' parts that are vlmzoo's own blocks (not inside a transformers sub-model, and not a
    container such as ``vision_towers`` whose parameters all lie in transformers sub-models)."""
    models = sub_models(model)
    inside = lambda name: any(name == m or name.startswith(m + ".") for m in models)  # noqa: E731
    names = [name for name, _ in model.named_parameters()]
    only_sub_models = lambda p: all(inside(n) for n in names if n.startswith(p + "."))  # noqa: E731
    return [
        p for prefixes in component_prefixes(model).values() for p in prefixes
        if not inside(p) and not only_sub_models(p) and p != "lm_head"
    ]  # fmt: skip


# ----- the language model's token view: decoder-only LMs read the prompt, encoder-decoders (Flan-T5) a target ------
DECODER_TARGET_LENGTH = 6


def with_decoder_target(model, batch: dict) -> dict:
    """``batch`` plus, for an encoder-decoder LM, a fixed ``DECODER_TARGET_LENGTH``-token decoder input (start
    token first), so that the logits cover several decoder positions; ``batch`` itself for a decoder-only LM."""
    if not model.config.is_encoder_decoder:
        return dict(batch)
    rows = batch["input_ids"].shape[0]
    start = model.config.get_text_config(decoder=True).decoder_start_token_id
    target = torch.arange(10, 10 + DECODER_TARGET_LENGTH - 1).repeat(rows, 1)
    return {**batch, "decoder_input_ids": torch.cat([torch.full((rows, 1), start), target], dim=1)}


def logit_tokens(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids the logits are aligned with and their (bool) mask: the prompt (decoder-only) or the decoder input."""
    if model.config.is_encoder_decoder:
        ids = inputs["decoder_input_ids"]
        return ids, torch.ones_like(ids, dtype=torch.bool)
    return inputs["input_ids"], inputs["attention_mask"].bool()


def next_token_targets(model, labels: torch.Tensor) -> torch.Tensor:
    """What each logit position predicts: the next label (decoder-only LM, -100 after the last) or the label itself
    (an encoder-decoder's decoder reads the labels shifted right)."""
    if model.config.is_encoder_decoder:
        return labels
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)


def generated_prefix_length(model, batch: dict) -> int:
    """Tokens before the new ones in generate()'s output: the prompt (decoder-only) or the decoder start token."""
    return 1 if model.config.is_encoder_decoder else batch["input_ids"].shape[1]


def batch_with_labels(model, batch: dict) -> tuple[dict, torch.Tensor]:
    """``with_decoder_target(model, batch)`` and labels on the tokens the logits belong to (-100 on padding)."""
    batch = with_decoder_target(model, batch)
    tokens, token_mask = logit_tokens(model, batch)
    return batch, tokens.masked_fill(~token_mask, -100)
