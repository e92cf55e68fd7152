"""BLIP-2 stage 1, representation learning: the Q-Former trained on a frozen ViT with ITC, ITM and ITG.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language
Models" (2023), section 3.2. transformers has the Q-Former and an inference-only ``Blip2ForImageTextRetrieval``;
this file owns what it lacks: the three stage-1 losses with the paper's attention masks, hard-negative mining for
ITM, and the image-grounded text generation head.

- The Q-Former reads text as a BERT: ``embeddings`` is transformers' ``Blip2TextEmbeddings`` over the Q-Former's
  vocabulary (``qformer_config.vocab_size``); the text feed-forward branch of each layer is switched on
  (``qformer_config.use_qformer_text_input = True``, set by this class on its copy of the config).
- Masks (``qformer_attention_mask``): ITC runs the queries alone (cross-attending to the ViT) and the text alone
  (bidirectional, no queries, no cross-attention): the uni-modal mask as two passes. ITM runs queries and text in
  one bidirectional pass. ITG runs queries and text in one pass with the multimodal causal mask: queries see only
  queries, text position j sees every query and text positions <= j. transformers' Q-Former turns 2-D masks into
  bidirectional ones, so every mask goes in as a 4-D additive (batch, 1, length, length) mask, which
  ``create_bidirectional_mask`` passes through unchanged. One ITG pass equals LAVIS's query pass + cached text pass:
  queries never see text, so their keys and values do not depend on it.
- ITG's decoder token ``[DEC]``: ``qformer_config.bos_token_id`` when set, else the last id of the Q-Former
  vocabulary (LAVIS appends ``[DEC]`` to BERT's 30522 tokens: id 30522 of a 30523-token vocabulary). The LM head is
  BERT's (dense, GELU, LayerNorm, then the word embeddings' transpose plus a bias): tied by construction.
- The projection width is ``config.image_text_hidden_size`` (256, the paper's).

Stage 1 -> stage 2: ``vision_tower``, ``query_tokens`` and ``qformer`` live under ``model`` as in
``ZooBlip2ForConditionalGeneration`` (keys ``model.vision_tower.*``, ``model.query_tokens.weight``,
``model.qformer.*``), so ``ZooBlip2ForConditionalGeneration.from_pretrained(stage1_dir)`` takes them as they are;
transformers reports the stage-1 heads as unused and initialises the projector and the language model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings, Blip2VisionModel
from transformers.utils import ModelOutput

from ..configuration.configuration_blip2 import ZooBlip2Config
from .blocks import LearnedTokens
from .modeling_blip2 import ZooBlip2PreTrainedModel

TEMPERATURE_INIT, TEMPERATURE_RANGE = 0.07, (0.001, 0.5)


def qformer_attention_mask(text_mask: torch.Tensor, num_queries: int, causal_text: bool) -> torch.Tensor:
    """Boolean "may attend" mask (batch, 1, Q + T, Q + T) for queries followed by text.

    Padding keys (``text_mask == 0``) are never attended. ``causal_text=False``: full bidirectional attention
    (ITM; with ``num_queries=0`` the text-only ITC pass). ``causal_text=True``: the multimodal causal mask of ITG.
    """
    batch, _ = text_mask.shape
    query_keys = text_mask.new_ones(batch, num_queries)
    keys = torch.cat([query_keys, text_mask], dim=1).bool()  # (batch, L)
    length = keys.shape[1]
    allowed = keys[:, None, :].expand(batch, length, length).clone()  # (batch, L queries, L keys)
    if causal_text:
        position = torch.arange(length, device=text_mask.device)
        row, col = position[:, None], position[None, :]
        is_query_row = row < num_queries
        # queries see queries only; text sees every query and text up to itself
        structure = torch.where(is_query_row, col < num_queries, (col < num_queries) | (col <= row))  # (L, L)
        allowed &= structure
    return allowed[:, None]  # (batch, 1, L, L)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's minimum elsewhere (what eager and sdpa both add to the scores)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def sample_hard_negatives(similarity: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row, drawn with probability softmax(row) over the row's off-diagonal entries (never the positive)."""
    if similarity.shape[0] < 2:
        raise ValueError("ITM hard negatives need at least 2 image-text pairs in the batch")
    diagonal = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    weights = similarity.float().masked_fill(diagonal, float("-inf")).softmax(dim=1)  # (B, B), zero diagonal
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)


class LearnableTemperature(nn.Module):
    """The contrastive temperature (init 0.07), a module so it initialises after a meta-device load."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(TEMPERATURE_INIT))

    def forward(self) -> torch.Tensor:
        return self.weight.clamp(*TEMPERATURE_RANGE)

    def _init_zoo_weights(self) -> None:
        init.constant_(self.weight, TEMPERATURE_INIT)


class QFormerTextEmbeddings(Blip2TextEmbeddings):
    """transformers' word + position embeddings; rebuilds its position ids after a meta-device load."""

    def _init_zoo_weights(self) -> None:
        init.copy_(self.position_ids, torch.arange(self.position_ids.shape[-1]).expand((1, -1)))


class QFormerLMHead(nn.Module):
    """BERT's LM head: dense -> GELU -> LayerNorm -> logits with the (tied) word embeddings plus a bias."""

    def __init__(self, hidden_size: int, vocab_size: int, act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[act]
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden_states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        hidden_states = self.LayerNorm(self.act(self.dense(hidden_states)))
        return F.linear(hidden_states, word_embeddings, self.bias)

    def _init_zoo_weights(self) -> None:
        init.zeros_(self.bias)


class Blip2Stage1Encoders(nn.Module):
    """The parts shared with the generation model, under the same names (hence the same keys)."""

    def __init__(self, config: ZooBlip2Config):
        super().__init__()
        width = config.qformer_config.hidden_size
        self.vision_tower = Blip2VisionModel._from_config(config.vision_config)
        self.query_tokens = LearnedTokens(config.num_query_tokens, width, std=config.qformer_config.initializer_range)
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)


@dataclass
class ZooBlip2PretrainingOutput(ModelOutput):
    """Stage-1 output. ``loss = loss_itc + loss_itm + loss_itg`` (``None`` with ``return_loss=False``).

    ``sim_i2t`` (images, texts): max over the queries of the cosine similarity (``sim_t2i`` its transpose);
    ``logits_per_image`` = ``sim_i2t / temperature``. ``image_embeds`` (images, queries, proj) and
    ``text_embeds`` (texts, proj) are the normalised projections. ITM: ``itm_logits`` (3B, 2) for
    [positives, (negative image, text), (image, negative text)], ``itm_labels``, and the sampled
    ``negative_image_ids`` (one per text) / ``negative_text_ids`` (one per image). ``itg_logits`` (B, T, vocab).
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_itg: torch.Tensor | None = None
    sim_i2t: torch.Tensor | None = None
    sim_t2i: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    negative_image_ids: torch.Tensor | None = None
    negative_text_ids: torch.Tensor | None = None
    itg_logits: torch.Tensor | None = None


class ZooBlip2ForQFormerPretraining(ZooBlip2PreTrainedModel):
    """BLIP-2 stage 1: frozen ViT, learned queries, Q-Former as a BERT, ITC / ITM / ITG heads."""

    main_input_name = "pixel_values"

    def __init__(self, config: ZooBlip2Config):
        config = copy.deepcopy(config)
        config.qformer_config.use_qformer_text_input = True  # the text branch of each Q-Former layer
        super().__init__(config)
        qformer = config.qformer_config
        width, proj = qformer.hidden_size, config.image_text_hidden_size
        self.model = Blip2Stage1Encoders(config)
        self.embeddings = QFormerTextEmbeddings(qformer)
        self.vision_projection = nn.Linear(width, proj)
        self.text_projection = nn.Linear(width, proj)
        self.itm_head = nn.Linear(width, 2)
        self.temp = LearnableTemperature()
        self.lm_head = QFormerLMHead(width, qformer.vocab_size, qformer.hidden_act, qformer.layer_norm_eps)
        self.post_init()
        self.model.vision_tower.requires_grad_(False)  # frozen ViT (stage 1 trains the Q-Former side only)

    # the generation model's component names
    vision_tower = property(lambda self: self.model.vision_tower)
    query_tokens = property(lambda self: self.model.query_tokens)
    qformer = property(lambda self: self.model.qformer)

    @property
    def decoder_token_id(self) -> int:
        """Id of ``[DEC]``: ``qformer_config.bos_token_id`` when set, else the last id of the vocabulary."""
        qformer = self.config.qformer_config
        bos = getattr(qformer, "bos_token_id", None)
        return bos if bos is not None else qformer.vocab_size - 1

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    def component_parts(self) -> dict[str, list]:
        """The generation model's components; the stage-1 heads train with the ``qformer`` component."""
        heads = [self.embeddings, self.vision_projection, self.text_projection, self.itm_head, self.temp, self.lm_head]
        parts: dict[str, list] = {}
        for component, paths in self.config.component_table.items():
            found = [getattr(self.model, path, None) for path in paths]
            parts[component] = [part for part in found if part is not None]
        parts["qformer"] += heads
        return parts

    # ----- encoders -----------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen ViT: (B, 3, H, W) -> (B, patches + 1, vision width)."""
        tower = self.model.vision_tower
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
        with torch.set_grad_enabled(trains):
            return tower(pixel_values=pixel_values.to(tower.dtype), return_dict=True).last_hidden_state

    def query_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Queries alone, cross-attending to the ViT features: (B, Q, width)."""
        queries = self.model.query_tokens(image_embeds.shape[0], like=image_embeds)  # (B, Q, width)
        return self.model.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds, return_dict=True
        ).last_hidden_state

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text alone, bidirectional, no queries and no cross-attention: (B, T, width)."""
        embeds = self.embeddings(input_ids=input_ids)  # (B, T, width)
        mask = additive_mask(qformer_attention_mask(attention_mask, 0, causal_text=False), embeds.dtype)
        return self.model.qformer(
            query_embeds=embeds, query_length=0, attention_mask=mask, return_dict=True
        ).last_hidden_state

    def multimodal_features(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal_text: bool
    ) -> torch.Tensor:
        """Queries then text in one pass (ITM: bidirectional; ITG: multimodal causal): (B, Q + T, width)."""
        num_queries = self.config.num_query_tokens
        queries = self.model.query_tokens(image_embeds.shape[0], like=image_embeds)  # (B, Q, width)
        embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)  # (B, Q + T, width)
        mask = additive_mask(qformer_attention_mask(attention_mask, num_queries, causal_text), embeds.dtype)
        return self.model.qformer(
            query_embeds=embeds,
            query_length=num_queries,
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
            return_dict=True,
        ).last_hidden_state

    # ----- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        generator: torch.Generator | None = None,
        itc_label_smoothing: float = 0.0,
        itg_label_smoothing: float = 0.1,
    ) -> ZooBlip2PretrainingOutput:
        """ITC (always) and, with ``return_loss``, ITM and ITG; ``generator`` makes the ITM negatives deterministic.

        ``pixel_values`` (B, 3, H, W) and ``input_ids`` / ``attention_mask`` (B, T) are B matching image-text pairs.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"input_ids must be (batch, length) with one text per image; got {tuple(input_ids.shape)} for "
                f"{pixel_values.shape[0]} images"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_embeds = self.encode_images(pixel_values)
        query_output = self.query_features(image_embeds)  # (B, Q, width)
        text_output = self.text_features(input_ids, attention_mask)  # (B, T, width)

        # ITC: normalised projections, best query per pair
        image_feats = F.normalize(self.vision_projection(query_output), dim=-1)  # (B, Q, proj)
        text_feat = F.normalize(self.text_projection(text_output[:, 0]), dim=-1)  # (B, proj)
        per_query = torch.einsum("iqd,td->itq", image_feats, text_feat)  # (B images, B texts, Q)
        sim_i2t = per_query.max(dim=-1).values  # (B images, B texts)
        temperature = self.temp()
        logits = sim_i2t / temperature  # (B images, B texts)
        itc = dict(
            sim_i2t=sim_i2t,
            sim_t2i=sim_i2t.t(),
            logits_per_image=logits,
            temperature=temperature,
            image_embeds=image_feats,
            text_embeds=text_feat,
        )
        if not return_loss:
            return ZooBlip2PretrainingOutput(**itc)

        batch = input_ids.shape[0]
        targets = torch.arange(batch, device=logits.device)
        loss_itc = (
            F.cross_entropy(logits, targets, label_smoothing=itc_label_smoothing)
            + F.cross_entropy(logits.t(), targets, label_smoothing=itc_label_smoothing)
        ) / 2

        # ITM: a hard negative image per text and a hard negative text per image
        with torch.no_grad():
            negative_images = sample_hard_negatives(logits.t(), generator)  # (B,) image index per text
            negative_texts = sample_hard_negatives(logits, generator)  # (B,) text index per image
        images_all = torch.cat([image_embeds, image_embeds[negative_images], image_embeds])  # (3B, patches, dim)
        ids_all = torch.cat([input_ids, input_ids, input_ids[negative_texts]])  # (3B, T)
        mask_all = torch.cat([attention_mask, attention_mask, attention_mask[negative_texts]])  # (3B, T)
        fused = self.multimodal_features(images_all, ids_all, mask_all, causal_text=False)  # (3B, Q + T, width)
        queries_out = fused[:, : self.config.num_query_tokens]  # (3B, Q, width)
        itm_logits = self.itm_head(queries_out).mean(dim=1)  # (3B, 2)
        itm_labels = torch.cat([targets.new_ones(batch), targets.new_zeros(2 * batch)])  # (3B,)
        loss_itm = F.cross_entropy(itm_logits, itm_labels)

        # ITG: [DEC] replaces the first token; text attends to all queries and causally to itself
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.decoder_token_id
        hidden = self.multimodal_features(image_embeds, decoder_ids, attention_mask, causal_text=True)
        text_hidden = hidden[:, self.config.num_query_tokens :]  # (B, T, width)
        itg_logits = self.lm_head(text_hidden, self.embeddings.word_embeddings.weight)  # (B, T, vocab)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss_itg = F.cross_entropy(
            itg_logits[:, :-1].flatten(0, 1),  # (B * (T - 1), vocab): position j predicts token j + 1
            labels[:, 1:].flatten(),  # (B * (T - 1),)
            ignore_index=-100,
            label_smoothing=itg_label_smoothing,
        )
        return ZooBlip2PretrainingOutput(
            loss=loss_itc + loss_itm + loss_itg,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_itg=loss_itg,
            **itc,
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            negative_image_ids=negative_images,
            negative_text_ids=negative_texts,
            itg_logits=itg_logits,
        )


__all__ = ["ZooBlip2ForQFormerPretraining", "ZooBlip2PretrainingOutput", "qformer_attention_mask"]
