"""Speed and memory baseline: a vlmzoo family against its transformers reference, in one process.

Owns the ``python benchmarks/compare_reference.py --family {llava,blip2,blip2-t5,qwen2_vl}`` measurements:

- ``llava``: vlmzoo's ``ZooLlavaForConditionalGeneration`` against transformers' ``LlavaForConditionalGeneration``
  (LLaVA 1.5, Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning": CLIP ViT -> mlp2x_gelu -> Llama).
- ``blip2``: vlmzoo's ``ZooBlip2ForConditionalGeneration`` against transformers' ``Blip2ForConditionalGeneration``
  (Li et al. 2023, "BLIP-2": ViT -> Q-Former with learned queries -> linear projection -> OPT). The weights go
  through the BLIP-2 converter's own key table and conversion plan (``convert_blip2.HF_KEY_TABLE``), so the
  benchmark renames nothing by hand.
- ``qwen2_vl``: vlmzoo's ``ZooQwen2VLForConditionalGeneration`` against transformers'
  ``Qwen2VLForConditionalGeneration`` (Wang et al. 2024, "Qwen2-VL": native-resolution ViT -> patch merger ->
  Qwen2 with M-RoPE), weights through the Qwen2-VL converter's key table; one image as packed patches.
- ``blip2-t5``: the same with a Flan-T5-style encoder-decoder LM (BLIP-2 Flan-T5): the prompt is encoded, prefill
  and generation start from the decoder start token, the train step's labels are a 16-token answer.

Method (the README beside this file explains it at length):
- The reference is built with random init in fp32; vlmzoo's model then receives the *same* weights (as they are
  for LLaVA, through the converter's key table for BLIP-2; every key must be accounted for), and the script
  refuses to measure anything unless both give the same logits (max abs diff <= 1e-4) on the same inputs.
- Prefill latency: one forward over the whole prompt with pixels, building the KV cache, last-token logits
  only (what ``generate`` does at its first step). Generation: ``generate`` greedy with the cache,
  exactly ``max_new_tokens`` new tokens (``min_new_tokens`` equal), tokens/s = new tokens / wall time of the
  whole call (prefill included, nothing subtracted). Training step: forward with labels + backward + SGD step
  on every parameter.
- Runs are interleaved (ours, reference, reference, ours, ...) after warm-up, so both sides share the noise
  of a busy machine; medians are reported and every single time is kept in the JSON.
- Peak memory: the peak of bytes held by tensors *created during* one run (activations, KV cache,
  gradients, temporaries), tracked per storage with a ``TorchDispatchMode``; the weights, which both sides
  hold equally, are reported apart. It is exact for tensors made by aten operators and ignores allocator
  caching and kernels' private scratch buffers; process RSS is not used because the CPU allocator keeps
  freed pages, so RSS within one process depends on what ran before.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    GenerationConfig,
    HfArgumentParser,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

import vlmzoo
from vlmzoo import ZooBlip2ForConditionalGeneration, ZooLlavaConfig, ZooLlavaForConditionalGeneration
from vlmzoo.conversion_scripts import convert_blip2
from vlmzoo.conversion_scripts.checkpoints import TensorInfo
from vlmzoo.conversion_scripts.key_tables import (
    KeyTable,
    TensorSource,
    apply_mapping,
    expected_tensors,
    plan_conversion,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARITY_TOLERANCE = 1e-4
MIB = 2**20


@dataclass
class BenchmarkArguments:
    family: Literal["llava", "blip2", "blip2-t5", "qwen2_vl"] = field(
        default="llava", metadata={"help": "vlmzoo family to compare (blip2-t5: BLIP-2 with a Flan-T5-style LM)"}
    )
    size: Literal["small", "tiny"] = field(
        default="small", metadata={"help": "'small': realistic layer sizes, few layers; 'tiny': a seconds-long smoke run"}
    )
    output: str | None = field(
        default=None, metadata={"help": "JSON path (default benchmarks/results/compare_reference_<family>.json)"}
    )
    repeats: int = field(default=5, metadata={"help": "timed runs per side and metric (medians reported)"})
    warmup: int = field(default=1, metadata={"help": "untimed runs per side and metric before timing"})
    threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (default: all CPU cores)"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per generate call"})
    text_tokens: int = field(default=32, metadata={"help": "text tokens in the prompt besides the image tokens"})
    attn_implementation: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention backend, both sides"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    seed: int = field(default=0, metadata={"help": "seed of the reference's random init and of the inputs"})


# ----- LLaVA: sizes, the pair of models, inputs ---------------------------------------------------------
LLAVA_SIZES: dict[str, dict] = {
    # CLIP ViT-B-like tower at 336 px / patch 14 (576 image tokens), an 8-layer Llama 1024 wide, 32k vocab
    "small": {
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 336, "patch_size": 14, "projection_dim": 512},
        "text": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
                 "num_key_value_heads": 16, "vocab_size": 32064, "max_position_embeddings": 4096},
        "image_token_id": 32000,
    },
    # same structure in miniature: 28 px / patch 14 (4 image tokens)
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 28, "patch_size": 14, "projection_dim": 32},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 512},
        "image_token_id": 300,
    },
}
BOS, EOS, PAD = 1, 2, 0

@dataclass
class ModelPair:
    ours: torch.nn.Module
    reference: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    description: dict
    # an encoder-decoder LM: the train step's inputs (labels replace the decoder start) and generate()'s output
    # holds the decoder start, not the prompt, before the new tokens
    train_inputs: dict[str, torch.Tensor] | None = None
    generated_prefix: int | None = None


def describe_pair(ours: torch.nn.Module, reference: torch.nn.Module, input_ids: torch.Tensor, **facts) -> dict:
    """The JSON's ``models`` entry: both classes, the family's facts (configs, token counts, ...), the prompt length,
    the parameter count and each side's attention backend (``facts`` may override the last)."""
    return {
        "ours": f"vlmzoo.{type(ours).__name__}",
        "reference": f"transformers.{type(reference).__name__}",
        **facts,
        "prompt_tokens": int(input_ids.shape[1]),
        "parameters": sum(p.numel() for p in ours.parameters()),
        "attn_implementation": facts.get("attn_implementation") or {
            "ours": ours.config._attn_implementation, "reference": reference.config._attn_implementation
        },
    }


def build_llava_pair(size: str, attn_implementation: str, device: torch.device, seed: int, text_tokens: int) -> ModelPair:
    spec = LLAVA_SIZES[size]
    vision = {"model_type": "clip_vision_model", **spec["vision"]}
    text = {"model_type": "llama", **spec["text"], "rms_norm_eps": 1e-5, "bos_token_id": BOS, "eos_token_id": EOS,
            "pad_token_id": PAD}
    image_token_id = spec["image_token_id"]
    num_image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2  # CLS dropped ("default" strategy)
    shared = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default", "image_seq_length": num_image_tokens}

    torch.manual_seed(seed)
    reference_config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                                   projector_hidden_act="gelu", **shared)
    reference = LlavaForConditionalGeneration._from_config(reference_config, attn_implementation=attn_implementation)
    our_config = ZooLlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                                projector_type="mlp2x_gelu", **shared)
    ours = ZooLlavaForConditionalGeneration._from_config(our_config, attn_implementation=attn_implementation)

    mapped = reference.state_dict()  # transformers' in-memory LLaVA keys are vlmzoo's own names
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight map incomplete: missing in ours {missing}, unused from the reference {unexpected}")
    ours.to(device).eval()
    reference.to(device).eval()

    # prompt: BOS, the image tokens, random text tokens (ids below the image token, above the specials)
    generator = torch.Generator().manual_seed(seed + 1)
    text_ids = torch.randint(3, image_token_id, (1, text_tokens), generator=generator)
    input_ids = torch.cat([torch.tensor([[BOS]]), torch.full((1, num_image_tokens), image_token_id), text_ids], dim=1)
    pixel_values = torch.randn(1, 3, vision["image_size"], vision["image_size"], generator=generator)
    labels = input_ids.masked_fill(input_ids == image_token_id, -100)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}
    description = describe_pair(
        ours, reference, input_ids, vision_config=vision, text_config=text, projector="mlp2x_gelu", batch_size=1,
        image_tokens=num_image_tokens, text_tokens=text_tokens + 1,
    )  # fmt: skip
    return ModelPair(ours, reference, {k: v.to(device) for k, v in inputs.items()}, labels.to(device), description)


# ----- BLIP-2: sizes, the pair of models, inputs --------------------------------------------------------
BLIP2_SIZES: dict[str, dict] = {
    # a ViT-B-like tower at 224 px / patch 14 (256 patches + CLS), a 4-layer BERT-base-wide Q-Former (cross-attention
    # every 2nd layer) with 32 queries, an 8-layer OPT 1024 wide (FFN 4096), 32k vocab: about LLaVA small's cost
    "small": {
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 224, "patch_size": 14},
        "qformer": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 4, "num_attention_heads": 12,
                    "cross_attention_frequency": 2},
        "text": {"hidden_size": 1024, "word_embed_proj_dim": 1024, "ffn_dim": 4096, "num_hidden_layers": 8,
                 "num_attention_heads": 16, "vocab_size": 32064, "max_position_embeddings": 2048},
        "num_query_tokens": 32,
        "image_token_id": 32000,
    },
    # same structure in miniature: 28 px / patch 14, 4 queries (4 image tokens)
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 28, "patch_size": 14},
        "qformer": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "cross_attention_frequency": 2},
        "text": {"hidden_size": 64, "word_embed_proj_dim": 64, "ffn_dim": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "vocab_size": 320, "max_position_embeddings": 512},
        "num_query_tokens": 4,
        "image_token_id": 300,
    },
}


class StateDictReader:
    """The part of the converters' ``CheckpointReader`` that the conversion plan reads, over an in-memory state dict."""

    def __init__(self, state_dict: dict[str, torch.Tensor], label: str = "reference"):
        self.label, self.directory = label, Path(f"<{label} state_dict>")
        self.state_dict = state_dict
        self.tensors = {key: TensorInfo(self.directory, tuple(t.shape), t.dtype) for key, t in state_dict.items()}

    def keys(self) -> list[str]:
        return list(self.tensors)


def load_through_key_table(ours: torch.nn.Module, state_dict: dict[str, torch.Tensor], key_table: KeyTable) -> dict:
    """Give ``ours`` the reference's tensors through a converter's key table and conversion plan (the converter's
    own renames, splits and checks); raises unless every reference key and every tensor of ``ours`` is accounted for."""
    reader = StateDictReader(state_dict)
    sources = [TensorSource(reader, key_table)]
    expected = expected_tensors(type(ours), ours.config)
    plan = plan_conversion(sources, expected)
    if plan.unused or plan.missing:
        raise RuntimeError(f"weight map incomplete: unused from the reference {[key for _, key in plan.unused]}, "
                           f"missing in ours {plan.missing}")
    mapped = {}
    for mapping in plan.mappings:
        tensors = [reader.state_dict[key] for _, key in mapping.inputs]
        where = " + ".join(f"'{key}'" for _, key in mapping.inputs)
        mapped.update(apply_mapping(mapping, tensors, expected, None, where))
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    missing = [key for key in missing if key not in expected.tied]
    if missing or unexpected:
        raise RuntimeError(f"weight map incomplete: missing in ours {missing}, unexpected {unexpected}")
    ours_tensors = dict(ours.state_dict(keep_vars=True))
    for key, source in expected.tied.items():  # a tied weight must really share its source's storage
        if ours_tensors[key].data_ptr() != ours_tensors[source].data_ptr():
            raise RuntimeError(f"'{key}' should be tied to '{source}' but holds its own tensor")
    return {
        "converted": len(plan.converted),
        "tied_duplicates": [key for _, key in plan.tied_duplicates],
        "recomputed_buffers": [key for _, key in plan.recomputed],
        "reference_keys": len(state_dict),
    }


# Flan-T5-style language models of about the OPT ones' cost: gated-GELU, untied head, half the layers each side
BLIP2_T5_TEXT: dict[str, dict] = {
    "small": {"d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 4, "num_heads": 16, "vocab_size": 32064},
    "tiny": {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 1, "num_heads": 4, "vocab_size": 320},
}
ANSWER_TOKENS = 16  # the T5 train step's target length


def build_blip2_t5_pair(size: str, attn_implementation: str, device: torch.device, seed: int, text_tokens: int):
    return build_blip2_pair(size, attn_implementation, device, seed, text_tokens, language_model="t5")


def build_blip2_pair(
    size: str, attn_implementation: str, device: torch.device, seed: int, text_tokens: int, language_model: str = "opt"
) -> ModelPair:
    spec = BLIP2_SIZES[size]
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # same loss on both sides
    # Blip2VisionConfig's initializer_range is 1e-10, which leaves a random tower all but silent: the image would
    # then not move the logits and the parity check could not see a mis-mapped vision or Q-Former weight
    vision = {**spec["vision"], "attention_dropout": 0.0, "initializer_range": 0.02}
    qformer = {**spec["qformer"], **no_dropout}
    text = {"model_type": "opt", **spec["text"], "dropout": 0.0, "attention_dropout": 0.0, "bos_token_id": BOS,
            "eos_token_id": EOS, "pad_token_id": PAD}
    if language_model == "t5":
        text = {"model_type": "t5", **BLIP2_T5_TEXT[size], "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
                "dropout_rate": 0.0, "decoder_start_token_id": PAD, "eos_token_id": EOS, "pad_token_id": PAD}  # fmt: skip
    image_token_id, num_query_tokens = spec["image_token_id"], spec["num_query_tokens"]

    torch.manual_seed(seed)
    reference_config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                   num_query_tokens=num_query_tokens, image_token_index=image_token_id)
    reference = Blip2ForConditionalGeneration._from_config(reference_config, attn_implementation=attn_implementation)
    with torch.no_grad():  # transformers initialises the queries to zeros, which would hide a mis-mapped tensor
        reference.query_tokens.normal_(0.0, reference_config.qformer_config.initializer_range)
    # the converter's config and key table: the benchmark repeats none of its renames
    our_config = convert_blip2.convert_hf_config(reference_config, convert_blip2.BLIP2)
    ours = ZooBlip2ForConditionalGeneration._from_config(our_config, attn_implementation=attn_implementation)
    accounting = load_through_key_table(ours, reference.state_dict(), convert_blip2.HF_KEY_TABLE)
    ours.to(device).eval()
    reference.to(device).eval()

    # prompt (transformers' Blip2Processor layout): the query tokens, BOS, random text tokens
    generator = torch.Generator().manual_seed(seed + 1)
    text_ids = torch.randint(3, image_token_id, (1, text_tokens), generator=generator)
    input_ids = torch.cat([torch.full((1, num_query_tokens), image_token_id), torch.tensor([[BOS]]), text_ids], dim=1)
    pixel_values = torch.randn(1, 3, vision["image_size"], vision["image_size"], generator=generator)
    labels = input_ids.masked_fill(input_ids == image_token_id, -100)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}
    train_inputs = generated_prefix = None
    if language_model == "t5":  # the prompt is encoded; prefill and generate start from the decoder start token
        labels = torch.randint(3, image_token_id, (1, ANSWER_TOKENS), generator=generator)
        train_inputs = dict(inputs)
        inputs["decoder_input_ids"] = torch.full((1, 1), PAD)
        generated_prefix = 1
    description = describe_pair(
        ours, reference, input_ids, vision_config=vision, qformer_config=qformer, text_config=text,
        num_query_tokens=num_query_tokens, projector="Q-Former + linear", batch_size=1, image_tokens=num_query_tokens,
        vision_tokens=(vision["image_size"] // vision["patch_size"]) ** 2 + 1, text_tokens=text_tokens + 1,
        weight_map={"key_table": "vlmzoo.conversion_scripts.convert_blip2.HF_KEY_TABLE", **accounting},
        attn_implementation={
            side: {name: getattr(model.config, name)._attn_implementation
                   for name in ("vision_config", "qformer_config", "text_config")}
            for side, model in (("ours", ours), ("reference", reference))
        },
    )  # fmt: skip
    if train_inputs is not None:
        train_inputs = {k: v.to(device) for k, v in train_inputs.items()}
    return ModelPair(ours, reference, {k: v.to(device) for k, v in inputs.items()}, labels.to(device), description,
                     train_inputs, generated_prefix)  # fmt: skip


# ----- Qwen2-VL: sizes, the pair of models, inputs -----------------------------------------------------
QWEN2_VL_SIZES: dict[str, dict] = {
    # an 8-block ViT 768 wide on a 336 x 336 image (24 x 24 patches -> 144 merged tokens), an 8-layer Qwen2 1024 wide
    "small": {
        "vision": {"depth": 8, "embed_dim": 768, "num_heads": 12, "mlp_ratio": 4, "hidden_size": 1024},
        "text": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
                 "num_key_value_heads": 16, "vocab_size": 32064, "max_position_embeddings": 4096},
        "mrope_section": [8, 12, 12],
        "image_size": 336,
    },
    # same structure in miniature: 56 x 56 px (4 x 4 patches -> 4 merged tokens)
    "tiny": {
        "vision": {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 64},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 512},
        "mrope_section": [2, 3, 3],
        "image_size": 56,
    },
}
QWEN2_VL_TOKENS = {"image_token_id": 300, "video_token_id": 301, "vision_start_token_id": 302, "vision_end_token_id": 303}


def build_qwen2_vl_pair(size: str, attn_implementation: str, device: torch.device, seed: int, text_tokens: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vlmzoo import ZooQwen2VLConfig, ZooQwen2VLForConditionalGeneration
    from vlmzoo.conversion_scripts import convert_qwen2_vl

    spec = QWEN2_VL_SIZES[size]
    vision = {**spec["vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "hidden_act": "quick_gelu"}  # fmt: skip
    text = {**spec["text"], "rms_norm_eps": 1e-6, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
            "tie_word_embeddings": False}  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 1e6}
    torch.manual_seed(seed)
    reference_config = Qwen2VLConfig(
        vision_config=vision, text_config={**text, "rope_parameters": {**rope, "mrope_section": spec["mrope_section"]}},
        tie_word_embeddings=False, **QWEN2_VL_TOKENS,
    )  # fmt: skip
    reference = Qwen2VLForConditionalGeneration._from_config(reference_config, attn_implementation=attn_implementation)
    our_config = ZooQwen2VLConfig(
        vision_config={"model_type": "qwen2_vl_vision", **vision},
        text_config={"model_type": "qwen2", **text, "rope_parameters": rope}, mrope_section=spec["mrope_section"],
        mrope_temporal_advance=False, tie_word_embeddings=False, **QWEN2_VL_TOKENS,
    )  # fmt: skip
    ours = ZooQwen2VLForConditionalGeneration._from_config(our_config, attn_implementation=attn_implementation)
    accounting = load_through_key_table(ours, reference.state_dict(), convert_qwen2_vl.HF_KEY_TABLE)
    ours.to(device).eval()
    reference.to(device).eval()

    # prompt: <|vision_start|>, the image's merged tokens, <|vision_end|>, random text tokens
    side = spec["image_size"] // 14
    grid = torch.tensor([[1, side, side]])
    num_image_tokens = side * side // 4
    generator = torch.Generator().manual_seed(seed + 1)
    text_ids = torch.randint(3, QWEN2_VL_TOKENS["image_token_id"], (1, text_tokens), generator=generator)
    start, end, image = (QWEN2_VL_TOKENS[key] for key in ("vision_start_token_id", "vision_end_token_id", "image_token_id"))
    input_ids = torch.cat(
        [torch.tensor([[start]]), torch.full((1, num_image_tokens), image), torch.tensor([[end]]), text_ids], dim=1
    )
    pixel_values = torch.randn(side * side, 3 * 2 * 14 * 14, generator=generator)  # packed patches
    labels = input_ids.masked_fill(input_ids == image, -100)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "image_grid_thw": grid,
              "mm_token_type_ids": (input_ids == image).long(), "attention_mask": torch.ones_like(input_ids)}  # fmt: skip
    description = describe_pair(
        ours, reference, input_ids, vision_config=vision, text_config=text, mrope_section=spec["mrope_section"],
        weight_map={"key_table": "vlmzoo.conversion_scripts.convert_qwen2_vl.HF_KEY_TABLE", **accounting},
        batch_size=1, image_tokens=num_image_tokens, text_tokens=text_tokens + 2,
    )  # fmt: skip
    return ModelPair(ours, reference, {k: v.to(device) for k, v in inputs.items()}, labels.to(device), description)


PAIR_BUILDERS: dict[str, Callable[..., ModelPair]] = {
    "llava": build_llava_pair, "blip2": build_blip2_pair, "blip2-t5": build_blip2_t5_pair, "qwen2_vl": build_qwen2_vl_pair,
}  # fmt: skip


# ----- measurement helpers ------------------------------------------------------------------------------
class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created while active (freed ones subtracted when their storage dies).

    Outputs that share storage with an input (views, in-place and ``out=`` ops) are not new memory.
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._finalizers: dict[int, weakref.finalize] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self._finalizers.pop(key, None)
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        outputs = func(*args, **kwargs)
        input_storages = {
            id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for tensor in tree_leaves(outputs):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            if key in input_storages or key in self._finalizers or nbytes == 0:
                continue
            self._finalizers[key] = weakref.finalize(storage, self._release, key, nbytes)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return outputs

    def __exit__(self, *exc):
        for finalizer in list(self._finalizers.values()):
            finalizer.detach()
        self._finalizers.clear()
        return super().__exit__(*exc)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(module: torch.nn.Module) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in list(module.parameters()) + list(module.buffers())}
    return sum(storages.values())


@dataclass
class Workload:
    """One metric: ``run(model, side)`` does the work once; results report ``per_run_units / seconds``
    when ``per_run_units`` is set (throughput), else milliseconds (latency)."""

    name: str
    label: str
    run: Callable[[torch.nn.Module, str], object]
    per_run_units: int | None = None
    unit: str = "ms"


def make_workloads(pair: ModelPair, max_new_tokens: int) -> list[Workload]:
    generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, use_cache=True,
    )
    optimizers = {
        side: torch.optim.SGD(model.parameters(), lr=1e-4)
        for side, model in (("ours", pair.ours), ("reference", pair.reference))
    }
    prompt_length = pair.generated_prefix or pair.inputs["input_ids"].shape[1]
    train_inputs = pair.train_inputs or pair.inputs

    def prefill(model, side):
        with torch.inference_mode():
            return model(**pair.inputs, use_cache=True, logits_to_keep=1).logits

    def generate(model, side):
        sequences = model.generate(**pair.inputs, generation_config=generation_config)
        if sequences.shape[1] - prompt_length != max_new_tokens:
            raise RuntimeError(f"{side} generated {sequences.shape[1] - prompt_length} tokens, not {max_new_tokens}")
        return sequences[:, prompt_length:]

    def train_step(model, side):
        model.train()
        optimizers[side].zero_grad(set_to_none=True)
        loss = model(**train_inputs, labels=pair.labels).loss
        loss.backward()
        optimizers[side].step()
        model.eval()
        return loss.detach()

    return [
        Workload("prefill_latency", "prefill", prefill),
        Workload("generate_tokens_per_s", "generate", generate, per_run_units=max_new_tokens, unit="tokens/s"),
        Workload("train_step_latency", "train step", train_step),
    ]


def interleaved_order(round_index: int) -> tuple[str, str]:
    """ours first on even rounds, reference first on odd ones, so neither side always runs in the other's wake."""
    return ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")


def measure(workload: Workload, models: dict[str, torch.nn.Module], device: torch.device, warmup: int,
            repeats: int) -> tuple[dict, dict]:
    first_outputs = {}
    for round_index in range(warmup):
        for side in interleaved_order(round_index):
            output = workload.run(models[side], side)
            first_outputs.setdefault(side, output)
    seconds: dict[str, list[float]] = {"ours": [], "reference": []}
    for round_index in range(repeats):
        for side in interleaved_order(round_index):
            synchronize(device)
            start = time.perf_counter()
            output = workload.run(models[side], side)
            synchronize(device)
            seconds[side].append(time.perf_counter() - start)
            first_outputs.setdefault(side, output)
    peaks = {}
    for side in ("ours", "reference"):
        with PeakTensorMemory() as tracker:
            workload.run(models[side], side)
            synchronize(device)
        peaks[side] = tracker.peak_bytes
    result = {"label": workload.label, "unit": workload.unit, "seconds": seconds}
    for side in ("ours", "reference"):
        median = statistics.median(seconds[side])
        value = workload.per_run_units / median if workload.per_run_units else median * 1000
        result[side] = value
        result[f"{side}_peak_tensor_mib"] = peaks[side] / MIB
    result["ratio"] = result["ours"] / result["reference"]
    result["peak_ratio"] = peaks["ours"] / peaks["reference"] if peaks["reference"] else None
    return result, first_outputs


# ----- report -------------------------------------------------------------------------------------------
def format_table(metrics: dict[str, dict]) -> str:
    rows = [("metric", "ours", "reference", "ratio ours/reference")]
    for name, result in metrics.items():
        rows.append((f"{name} ({result['unit']}, median)", f"{result['ours']:.2f}", f"{result['reference']:.2f}",
                     f"{result['ratio']:.3f}"))
    for name, result in metrics.items():
        rows.append((f"{result['label']} peak tensor memory (MiB)",
                     f"{result['ours_peak_tensor_mib']:.1f}", f"{result['reference_peak_tensor_mib']:.1f}",
                     f"{result['peak_ratio']:.3f}" if result["peak_ratio"] is not None else "n/a"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if args.repeats < 1 or args.warmup < 1:
        raise ValueError(f"--repeats and --warmup must be at least 1, got {args.repeats} and {args.warmup}")
    if args.max_new_tokens < 1 or args.text_tokens < 1:
        raise ValueError("--max_new_tokens and --text_tokens must be at least 1")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    load_before = os.getloadavg()

    started = time.perf_counter()
    pair = PAIR_BUILDERS[args.family](args.size, args.attn_implementation, device, args.seed, args.text_tokens)
    models = {"ours": pair.ours, "reference": pair.reference}
    print(f"built {args.family} '{args.size}': {pair.description['parameters'] / 1e6:.1f}M parameters, "
          f"{pair.description['prompt_tokens']} prompt tokens ({time.perf_counter() - started:.1f}s)", flush=True)

    # honesty check: identical weights must give identical logits before anything is timed
    with torch.inference_mode():
        logits = {side: model(**pair.inputs).logits.float() for side, model in models.items()}
    parity = (logits["ours"] - logits["reference"]).abs().max().item()
    if not parity <= PARITY_TOLERANCE:
        raise SystemExit(f"logits differ by {parity:.3g} > {PARITY_TOLERANCE}: the comparison would not be fair")
    print(f"parity: max |logits ours - reference| = {parity:.3g} (max |logit| {logits['reference'].abs().max():.3g})")

    metrics, checks = {}, {"max_abs_logit_diff": parity, "tolerance": PARITY_TOLERANCE}
    for workload in make_workloads(pair, args.max_new_tokens):
        result, first_outputs = measure(workload, models, device, args.warmup, args.repeats)
        metrics[workload.name] = result
        print(f"{workload.name}: ours {result['ours']:.2f} {result['unit']}, reference {result['reference']:.2f}",
              flush=True)
        if workload.name == "generate_tokens_per_s":
            checks["generated_ids_equal"] = bool(torch.equal(first_outputs["ours"], first_outputs["reference"]))
        if workload.name == "train_step_latency":  # first step: both sides start from the same weights
            checks["first_train_loss"] = {side: float(loss) for side, loss in first_outputs.items()}

    table = format_table(metrics)
    print("\n" + table)
    report = {
        "family": args.family,
        "size": args.size,
        "arguments": asdict(args),
        "models": pair.description,
        "checks": checks,
        "metrics": metrics,
        "weights_mib": {side: tensor_bytes(model) / MIB for side, model in models.items()},
        "method": {
            "prefill_latency": "one forward over the whole prompt with pixels, use_cache=True, logits_to_keep=1 "
                               "(generate's first step), torch.inference_mode; median of the timed runs, ms",
            "generate_tokens_per_s": "generate greedy with the KV cache, min_new_tokens = max_new_tokens; new tokens "
                                     "/ median wall time of the whole call (prefill included, nothing subtracted)",
            "train_step_latency": "model.train(), forward with labels (image tokens -100), backward, SGD step "
                                  "(lr 1e-4) on every parameter; median, ms",
            "peak_tensor_mib": "peak bytes of tensor storages created during one run (activations, KV cache, "
                               "gradients, temporaries), tracked per storage with a TorchDispatchMode in a separate "
                               "untimed run; the weights are excluded (see weights_mib); allocator caching and "
                               "kernels' private scratch space are not counted. Process RSS is not used: within one "
                               "process the allocator keeps freed pages, so RSS depends on what ran before.",
            "interleaving": "warm-up rounds, then rounds alternating ours/reference and reference/ours",
        },
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vlmzoo": vlmzoo.__version__,
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "total_seconds": time.perf_counter() - started,
        },
    }
    output = Path(args.output) if args.output else RESULTS_DIR / f"compare_reference_{args.family}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
