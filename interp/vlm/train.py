"""The VLM trained here: a tiny LLaVA (CLIP-style patch encoder + projector + tiny Llama) on synthetic scenes.

**Data**: :mod:`interp.vlm.scenes` (4 x 4 grid of 8 x 8 px cells, one object = one image patch). The prompt is
``"<image>" + question`` (e.g. ``"<image>is there a red square?"``); the processor expands ``<image>`` into one image
token per patch (16), the tokenizer adds ``<bos>``: ``[<bos>, 16 x <image>, is, there, a, red, square, ?]``, 23
tokens for both question kinds. The model answers with one word at the last position (``?``); the loss is the
cross-entropy of that answer token only.

**Model**: a standard ``LlavaForConditionalGeneration`` (loadable with plain ``from_pretrained``):

* vision tower: CLIP vision, 32 x 32 images, patch 8 (16 patches + CLS), 1 layer x 4 heads, width 64, **its
  attention zeroed and frozen**: a per-patch encoder (patch embedding + position embedding + LayerNorm + MLP), so
  the image embedding of patch ``c`` depends on the pixels of cell ``c`` only and "the object's patches" is exact
  (checked in the tests). The LM reads the last layer's hidden states without CLS (``vision_feature_layer=-1``,
  ``"default"`` strategy);
* projector: LLaVA's Linear-GELU-Linear, 64 -> 64 -> 64;
* language model: Llama, 3 layers x 4 heads, d_model 64, MLP 128, a 23-word vocabulary (a word-level tokenizer
  built offline with ``tokenizers``: the question/answer words, ``<image>``, ``<bos>``, ``<eos>``, ``<pad>``,
  ``<unk>``), RoPE, untied embeddings.

*Why a tiny LM trained from scratch rather than SmolLM2 frozen*: SmolLM2-135M would make the checkpoint ~270 MB
(or require the bundled model at load time, which the tests must not), its 576-wide residual makes every forward
pass ~100x the cost of this 64-wide one on the shared 2-core CPU, and a frozen LM would need a far larger
projector to be steered into answering. The tiny model trains in a few minutes and its checkpoint (0.73 MB) is
committed under ``data/toy/vlm``.

**Planted visual sink**: real VLMs carry a few visual tokens with massive activations in a few dimensions of the
(normalised) hidden state (VAR, Kang et al. 2025); a 3-minute toy does not grow one by itself, so it is planted
by an auxiliary training objective: on the background patch :data:`~interp.vlm.scenes.SINK_CELL` (never an
object) the LM's residual stream after block 0 and after block 1 must have ``|RMSNorm(h)[SINK_DIM]| >= 6``
(``RMSNorm`` without gain: ``h / rms(h)``), and every other position of a sequence ``<= 2`` in that dimension
(hinge losses, the second on the worst other position, weight :attr:`VLMTrainConfig.sink_weight`, applied
after the colour-only phase: from step 0 they kept the answer loss at chance). The sink is then *measured* on
held-out scenes (:func:`measure_sink`) and recorded in ``truth.json``. VAR's threshold tau = 20 cannot be met
by a 64-wide model (``max_i |h_i| / rms(h) <= sqrt(d) = 8``), so ``truth.json`` records ``tau = sqrt(d) / 2 = 4``
("one dimension holds at least a quarter of the token's squared norm"), chosen from that bound, not from the
measurements, and the measured values on both sides of it.

**Planted vision-aware heads (opt-in; NOT in the committed checkpoint)**: the LM's heads can be split by
construction of training into vision heads (:attr:`VLMTrainConfig.vision_heads`, default :data:`VISION_HEADS`)
and text heads (all others). With :attr:`VLMTrainConfig.text_attention_weight` > 0, from step
:attr:`VLMTrainConfig.heads_from_step` on, ramped up linearly over :attr:`VLMTrainConfig.heads_ramp_steps`:

* a penalty on the attention mass on the image tokens (summed over query positions, averaged over heads and
  sequences) of the text heads from every query position after ``<bos>`` and, with
  :attr:`VLMTrainConfig.vision_last_only`, of the vision heads from every such position but the last (eager
  attention during training): the image is to be read only at the answer position and only by the vision heads,
  which is where VHD looks;
* head dropout (:class:`HeadDropout`, per head and sequence, the kept heads scaled by ``1 / (1 - p)``) on the
  text heads (:attr:`VLMTrainConfig.text_head_dropout`), so that no single text head is indispensable, and on
  the vision heads at every position but the last (:attr:`VLMTrainConfig.vision_dropout`): without it the model
  leaned on the never-dropped L0.H0's output at the image tokens, whose zero ablation broke every answer while
  its VHD was ~0.

All act through the loss and hooks only (the saved model stays a plain ``LlavaForConditionalGeneration``), and
``truth.json`` then records the vision heads and each head's measured attention on the image. **Measured**: in
the six runs completed (2000 steps each, 1 thread; text dropout 0.1-0.5; terms from step 0 or 300, sudden or
ramped; the penalty averaged (an earlier version) or summed over positions; vision heads free or last-position
only) the "is there" questions stayed at chance (held-out accuracy 0.51-0.59) while colour questions reached
0.43-0.79 (three more runs, one starting the terms at step 1000, were stopped with the answer loss at chance),
so no such checkpoint is committed; e.g.
``VLMTrainConfig(text_attention_weight=1, text_head_dropout=0.1, vision_dropout=0.5)``: exists 0.514, colour
0.777, the planted L1.H0 / L2.H0 / L1.H1 the top-3 VHD heads, but no head's ablation moves P(yes) by more than
0.004 (VHD vs ablation Spearman -0.08), and text head L0.H2 still puts 0.38 of its last-token attention on the
image. One factor at a time (same settings otherwise): the penalty alone (no dropout) left exists at 0.514
(colour 0.787); the dropouts alone (no penalty) gave exists 0.682, colour 0.758: the attention penalty is what
keeps the "is there" questions at chance. The defaults (terms off) made the committed checkpoint.

**One-token questions** (:attr:`VLMTrainConfig.one_token_questions`; the second checkpoint ``data/toy/vlm-onetoken``):
the same texts, but the tokenizer's normaliser turns each question into one word (``exists_red_square?``,
``colour_of_circle?``), so the prompt is ``[<bos>, 16 x <image>, question]`` and the answer position holds the
whole question: no head has to carry it there, as L0.H3 of the word-level checkpoint does (VHD ~ 0, the most
harmful head to ablate). Measured for issue 17's VHD check (Spearman(VHD, zero-ablation harm), 24 held-out "is
there" yes questions; ``python analyses/vhd_seeds.py OUT``), each prediction committed before its training:

* 3 x 4 heads, seed 0 (commit 285e7f1, predicted > 0.5): 0.483 (p = 0.11), not met. Seeds 0-4, run after: 0.48 /
  0.92 / 0.07 / 0.52 (seed 4 did not learn), word-level questions 0.31 / 0.15 / -0.31 / 0.33 / -0.27: a 12-head
  Spearman swings with the seed, and removing the text head's job raises it (medians 0.50 vs 0.15).
* 3 x 8 heads (commit 84b7e9a, predicted > 0.5 for seed 0 and for the median over the seeds that learn): seed 0
  0.679 (p < 0.001), seeds 1-3 0.53 / 0.48 / 0.39, seed 4 did not learn; median 0.504. Seed 0 is the committed
  ``data/toy/vlm-onetoken`` (``python -m interp.vlm.train DIR --one-token-questions --n-heads 8``, ~105 s).

**Training**: AdamW (warmup, cosine decay to 10%), seeded (scenes, questions, init), CPU, batches of fresh
training-split scenes. A curriculum: the first :attr:`VLMTrainConfig.colour_only_steps` steps ask only
``colour`` questions (read the colour of the patch holding a shape), then each batch is half of each kind;
without it the answer loss sat at the prior (1.04) for the 700 steps tried, and ``exists`` alone (conjunctions
with hard negatives) did not leave chance in 300 steps. The defaults of :class:`VLMTrainConfig` produced the
committed checkpoint (settings, seconds, losses and held-out accuracy in its ``interp_source.json``).

Run ``python -m interp.vlm.train data/toy/vlm`` to retrain it (1 thread; it reproduced the committed
``model.safetensors`` byte for byte, 392-508 s on the shared machine; again on 2026-11-30 with the planted-heads
code in place and its terms off, the defaults: 503 s at load average 12-19).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError
from interp.vlm import scenes as S

__all__ = ["VLMTrainConfig", "train_vlm", "build_tokenizer", "build_processor", "llava_config", "build_model",
           "encode_questions", "answer_logits", "evaluate", "measure_sink", "answer_loss", "VOCAB", "IMAGE_TOKEN",
           "SINK_DIM", "SINK_LAYERS", "truth_record", "VISION_HEADS", "text_heads",
           "image_attention", "HeadDropout", "measure_heads", "vocab", "ONE_TOKEN_QUESTIONS",
           "has_one_token_questions"]

IMAGE_TOKEN = "<image>"
_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", IMAGE_TOKEN)
_WORDS = ("is", "there", "a", "what", "colour", "the", "?", "yes", "no") + S.COLOURS + S.SHAPES
VOCAB = _SPECIALS + _WORDS
#: the one-token questions' vocabulary words (:attr:`VLMTrainConfig.one_token_questions`): the tokenizer's normaliser
#: rewrites "is there a red square?" to ``exists_red_square?`` and "what colour is the circle?" to ``colour_of_circle?``
ONE_TOKEN_QUESTIONS = tuple(f"exists_{c}_{s}?" for c in S.COLOURS for s in S.SHAPES) + tuple(
    f"colour_of_{s}?" for s in S.SHAPES)


def vocab(one_token: bool = False) -> tuple[str, ...]:
    """The LM's vocabulary: :data:`VOCAB` (word-level questions) or, with ``one_token``, the specials (same ids),
    the answers and :data:`ONE_TOKEN_QUESTIONS`."""
    return _SPECIALS + ("yes", "no") + S.COLOURS + ONE_TOKEN_QUESTIONS if one_token else VOCAB


#: the residual dimension of the planted sink, and the LM residual streams it is planted in
#: (hidden_states indices: 1 = after block 0, 2 = after block 1)
SINK_DIM = 7
SINK_LAYERS = (1, 2)
#: the planted vision-aware heads ``(layer, head)`` of the LM (module docstring); every other head is a text head
VISION_HEADS = ((0, 0), (1, 0), (1, 1), (2, 0))
_SINK_HIGH = 6.0
_SINK_LOW = 2.0


@dataclass(frozen=True, kw_only=True)
class VLMTrainConfig:
    """Settings of :func:`train_vlm` (the defaults made the committed checkpoint).

    ``colour_only_steps``: the curriculum's first phase (module docstring); ``sink_weight``: the weight of the
    sink-planting hinge losses, applied after that phase; ``vision_attention``: keep the vision tower's attention
    (``False``, the default: zeroed and frozen, a per-patch encoder whose object truth is exact).
    ``vision_heads``, ``text_attention_weight``, ``text_head_dropout``, ``vision_dropout``, ``heads_from_step``,
    ``heads_ramp_steps``, ``vision_last_only``: the opt-in planted vision heads (module docstring; off by default).
    ``one_token_questions``: each question is one token (module docstring, "One-token questions"; the checkpoint
    ``data/toy/vlm-onetoken``).
    """

    d_vision: int = 64
    vision_layers: int = 1
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    d_mlp: int = 128
    steps: int = 2000
    colour_only_steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    sink_weight: float = 0.3
    vision_attention: bool = False
    vision_heads: tuple[tuple[int, int], ...] = VISION_HEADS
    text_attention_weight: float = 0.0
    text_head_dropout: float = 0.0
    vision_dropout: float = 0.0
    heads_from_step: int = 300
    heads_ramp_steps: int = 1000
    vision_last_only: bool = True
    one_token_questions: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.colour_only_steps < 0:
            raise ConfigError(f"VLMTrainConfig.colour_only_steps must be >= 0, got {self.colour_only_steps}")
        for name in ("d_vision", "vision_layers", "d_model", "n_layers", "n_heads", "d_mlp", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VLMTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads or self.d_vision % self.n_heads:
            raise ConfigError(f"d_model and d_vision must be multiples of n_heads, got {self.d_model}, "
                              f"{self.d_vision}, n_heads={self.n_heads}")
        if self.d_model <= SINK_DIM or self.n_layers <= max(SINK_LAYERS):
            raise ConfigError(f"the planted sink needs d_model > {SINK_DIM} and n_layers > {max(SINK_LAYERS)}, "
                              f"got {self.d_model}, {self.n_layers}")
        heads = [(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]
        if not self.vision_heads or not set(self.vision_heads) <= set(heads) or \
                len(set(self.vision_heads)) == len(heads):
            raise ConfigError(f"vision_heads must be distinct (layer, head) pairs of the {self.n_layers} x "
                              f"{self.n_heads} LM heads, at least one and not all, got {self.vision_heads}")
        if not (0 <= self.text_head_dropout < 1 and 0 <= self.vision_dropout < 1) or self.text_attention_weight < 0 \
                or self.heads_from_step < 0 or self.heads_ramp_steps < 1:
            raise ConfigError(f"text_head_dropout and vision_dropout must lie in [0, 1), text_attention_weight and "
                              f"heads_from_step be >= 0, heads_ramp_steps >= 1, got {self.text_head_dropout}, "
                              f"{self.vision_dropout}, {self.text_attention_weight}, {self.heads_from_step}, "
                              f"{self.heads_ramp_steps}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.sink_weight < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay, warmup_steps, sink_weight >= 0, got {self.lr}, "
                              f"{self.weight_decay}, {self.warmup_steps}, {self.sink_weight}")


def build_tokenizer(one_token: bool = False) -> Any:
    """The word-level tokenizer (lower-cases, splits words and ``?``, adds ``<bos>``), built offline; with
    ``one_token`` its normaliser turns each question into one word of :data:`ONE_TOKEN_QUESTIONS` (the same texts
    work with both) and it splits on whitespace only."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(vocab(one_token))}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    if one_token:
        tok.normalizer = normalizers.Sequence([
            normalizers.Lowercase(), normalizers.Replace("is there a ", "exists_"),
            normalizers.Replace("what colour is the ", "colour_of_"), normalizers.Replace(" ", "_")])
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", words["<bos>"])])
    tok.add_special_tokens(list(_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left")


def build_processor(tokenizer: Any | None = None) -> Any:
    """``LlavaProcessor``: a ``CLIPImageProcessor`` of the scenes' size (no resize or crop; rescale and normalise
    as :func:`interp.vlm.scenes.pixel_values`) and the word-level tokenizer."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image = CLIPImageProcessor(do_resize=False, do_center_crop=False, size={"shortest_edge": S.IMAGE},
                               crop_size={"height": S.IMAGE, "width": S.IMAGE}, do_rescale=True,
                               rescale_factor=1 / 255, do_normalize=True, image_mean=list(S.IMAGE_MEAN),
                               image_std=list(S.IMAGE_STD), do_convert_rgb=True)
    return LlavaProcessor(image_processor=image, tokenizer=tokenizer or build_tokenizer(), patch_size=S.CELL,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN)


def llava_config(cfg: VLMTrainConfig) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    words = {w: i for i, w in enumerate(vocab(cfg.one_token_questions))}
    vision = CLIPVisionConfig(hidden_size=cfg.d_vision, intermediate_size=2 * cfg.d_vision,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.n_heads,
                              image_size=S.IMAGE, patch_size=S.CELL, num_channels=3, projection_dim=cfg.d_vision)
    text = LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
                       num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, max_position_embeddings=64,
                       vocab_size=len(words), bos_token_id=words["<bos>"], eos_token_id=words["<eos>"],
                       pad_token_id=words["<pad>"], tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=words[IMAGE_TOKEN],
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       image_seq_length=S.N_PATCHES, projector_hidden_act="gelu", tie_word_embeddings=False)


def build_model(cfg: VLMTrainConfig) -> Any:
    """A randomly initialised model (private generator seeded with ``cfg.seed``; the global RNG is untouched)."""
    from transformers import LlavaForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(llava_config(cfg))
    model = model.float()
    with torch.no_grad():   # a per-patch encoder: the vision tower's attention is off (zero and frozen)
        for layer in [] if cfg.vision_attention else model.model.vision_tower.encoder.layers:
            for prm in layer.self_attn.parameters():
                prm.zero_()
                prm.requires_grad_(False)
    return model


@lru_cache(maxsize=2)
def _tokenizer(one_token: bool = False) -> Any:
    return build_tokenizer(one_token)


def has_one_token_questions(model: Any) -> bool:
    """Whether ``model`` (a trained Llava of this module) has one-token questions (told by its vocabulary size)."""
    return int(model.config.text_config.vocab_size) == len(vocab(True))


def encode_questions(texts: list[str], one_token: bool = False) -> Int[Tensor, "batch pos"]:
    """``[B, 23]`` input ids of ``"<image>" + text`` with the image token expanded to one per patch (what the
    saved processor produces; checked in the tests); ``[B, 18]`` with ``one_token``."""
    tok = _tokenizer(one_token)
    ids = tok([IMAGE_TOKEN * S.N_PATCHES + t for t in texts], return_tensors="pt", padding=True)["input_ids"]
    return ids


def answer_logits(model: Any, input_ids: Int[Tensor, "batch pos"], pixel_values: Float[Tensor, "batch 3 height width"], **kw: Any) -> Any:
    """The model's output (``output_hidden_states`` as asked) and the logits at the last position."""
    out = model(input_ids=input_ids, pixel_values=pixel_values, **kw)
    return out, out.logits[:, -1]


def _batch(kind_seed: int, n: int, split: str, kinds: tuple[str, ...] = S.KINDS, one_token: bool = False) -> tuple[Any, ...]:
    scenes = S.draw_scenes(n, seed=kind_seed, split=split)
    parts = [S.SceneBatch(scenes.colour[j::len(kinds)], scenes.cell[j::len(kinds)]) for j in range(len(kinds))]
    qs = [q for j, (kind, part) in enumerate(zip(kinds, parts))
          for q in S.draw_questions(part, kind, seed=kind_seed + 7919 * j)]
    scenes = S.SceneBatch(torch.cat([p.colour for p in parts]), torch.cat([p.cell for p in parts]))
    ids = {w: i for i, w in enumerate(vocab(one_token))}
    return (encode_questions([q.text for q in qs], one_token), scenes.pixel_values(),
            torch.tensor([ids[q.answer] for q in qs]), qs, scenes)


def _rms_normed(h: torch.Tensor) -> torch.Tensor:
    return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def text_heads(config: VLMTrainConfig) -> list[tuple[int, int]]:
    """The LM heads that are not :attr:`VLMTrainConfig.vision_heads` (kept off the image in training)."""
    return [(l, h) for l in range(config.n_layers) for h in range(config.n_heads) if (l, h) not in
            set(config.vision_heads)]


def image_attention(attentions: tuple[Float[Tensor, "batch head pos key"], ...],
                    input_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head batch pos"]:
    """Each head's attention mass on the image tokens from every query position (``[layer, head, B, T]``)."""
    keys = (input_ids == VOCAB.index(IMAGE_TOKEN)).to(attentions[0].dtype)      # [B, T]
    return torch.stack([(a * keys[:, None, None, :]).sum(-1).transpose(0, 1) for a in attentions])


def answer_loss(model: Any, input_ids: Int[Tensor, "batch pos"], pixels: Float[Tensor, "batch 3 height width"], answers: Int[Tensor, " batch"],
                sink_weight: float = 0.0, head_weight: float = 0.0, text: tuple[tuple[int, int], ...] = (),
                vision: tuple[tuple[int, int], ...] = ()) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """(total loss, answer loss): cross-entropy of the answer at the last position, plus ``sink_weight`` times
    the hinge losses planting the sink and ``head_weight`` times the attention mass on the image tokens, summed over
    query positions and averaged over heads and sequences, of the ``text`` heads (from every query position after
    ``<bos>``) and of the ``vision`` heads (from every such position but the last); module docstring."""
    heads_on = head_weight > 0 and len(text) + len(vision) > 0
    out, logits = answer_logits(model, input_ids, pixels, output_hidden_states=sink_weight > 0,
                                output_attentions=heads_on)
    ce = torch.nn.functional.cross_entropy(logits, answers)
    aux = ce.new_zeros(())
    if sink_weight > 0:
        sink_pos = 1 + S.SINK_CELL                                     # after <bos>
        for layer in SINK_LAYERS:
            v = _rms_normed(out.hidden_states[layer])[..., SINK_DIM]    # [B, T]
            aux = aux + sink_weight * torch.relu(_SINK_HIGH - v[:, sink_pos].abs()).mean()
            others = torch.cat([v[:, :sink_pos], v[:, sink_pos + 1:]], dim=1)
            aux = aux + sink_weight * torch.relu(others.abs() - _SINK_LOW).amax(1).mean()   # the worst other
    if heads_on:
        mass = image_attention(out.attentions, input_ids)                           # [L, H, B, T]
        rows = [mass[l, h, :, 1:] for l, h in text] + [mass[l, h, :, 1:-1] for l, h in vision]
        aux = aux + head_weight * torch.stack([r.sum(-1) for r in rows]).mean()   # summed over positions
    return ce + aux, ce


class HeadDropout:
    """Context manager (training only): each ``(layer, head)`` of ``heads`` has its ``z`` zeroed with
    probability ``p`` per sequence (the kept ones scaled by ``1 / (1 - p)``), at every position or, with
    ``but_last``, at every position but the last, through forward pre-hooks on the LM's ``o_proj`` that are
    removed on exit; the masks come from ``generator``."""

    def __init__(self, model: Any, heads: list[tuple[int, int]], p: float, generator: torch.Generator, *,
                 but_last: bool = False) -> None:
        self.model, self.heads, self.p, self.gen, self.handles = model, heads, p, generator, []
        self.but_last = but_last

    def __enter__(self) -> HeadDropout:
        if self.p <= 0 or not self.heads:
            return self
        text = self.model.config.text_config
        n_heads, d_head = text.num_attention_heads, text.hidden_size // text.num_attention_heads
        for layer_idx, layer in enumerate(self.model.model.language_model.layers):
            mine = [h for l, h in self.heads if l == layer_idx]
            if mine:
                self.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
                    self._hook(torch.tensor(mine), n_heads, d_head)))
        return self

    def _hook(self, mine: torch.Tensor, n_heads: int, d_head: int) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            z = args[0]
            scale = torch.ones(z.shape[0], n_heads, dtype=z.dtype)
            drop = torch.rand(z.shape[0], len(mine), generator=self.gen) < self.p
            scale[:, mine] = (~drop).to(z.dtype) / (1 - self.p)
            scale = scale[:, None, :].repeat(1, z.shape[1], 1)                  # [B, T, H]
            if self.but_last:
                scale[:, -1] = 1.0
            z = (z.view(*z.shape[:-1], n_heads, d_head) * scale[..., None]).view(z.shape)
            return (z, *args[1:])
        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@torch.no_grad()
def evaluate(model: Any, n: int = 512, seed: int = 1) -> dict[str, dict[str, float]]:
    """Held-out accuracy per question kind (argmax over the whole vocabulary == the answer), with chance."""
    res = {}
    for k, kind in enumerate(S.KINDS):
        ids, px, ans, _, _ = _batch(seed * 1_000_003 + k, n, "held_out", kinds=(kind,), one_token=has_one_token_questions(model))
        _, logits = answer_logits(model, ids, px)
        res[kind] = {"accuracy": round(float((logits.argmax(-1) == ans).float().mean()), 4),
                     "chance": S.CHANCE[kind], "n": n}
    return res


@torch.no_grad()
def measure_sink(model: Any, n: int = 256, seed: int = 2) -> dict[str, Any]:
    """Measure VAR's sink criterion on ``n`` held-out scenes, per LM residual stream (``hidden_states`` index;
    the last one, HF's final-normed state, is left out). With ``r = |h / rms(h)|`` at the visual tokens:

    * ``massive_dim``: the dimension holding the largest ``r`` (mean over scenes of the max over tokens), the
      model's massive dimension at that layer (Sun et al.: the largest magnitudes);
    * ``sink_min``: ``r[massive_dim]`` at the sink patch, min over scenes; ``others_max``: the max of
      ``r[massive_dim]`` over the other 15 visual tokens and all scenes; ``others_max_any_dim``: the same over
      every dimension (a non-sink token's own largest value, for the record);
    * ``is_sink``: ``sink_min > tau >= others_max`` with ``tau = sqrt(d) / 2`` (module docstring).
    """
    ids, px, _, _, _ = _batch(seed * 1_000_003, n, "held_out", one_token=has_one_token_questions(model))
    out, _ = answer_logits(model, ids, px, output_hidden_states=True)
    img_pos = (ids[0] == VOCAB.index(IMAGE_TOKEN)).nonzero().flatten()
    d = out.hidden_states[0].shape[-1]
    tau = math.sqrt(d) / 2
    others = [c for c in range(S.N_PATCHES) if c != S.SINK_CELL]
    layers = []
    for layer, h in enumerate(out.hidden_states[:-1]):
        r = _rms_normed(h[:, img_pos]).abs()                        # [B, 16, d]
        dim = int(r.amax(1).mean(0).argmax())
        sink, rest = r[:, S.SINK_CELL, dim], r[:, others, dim]
        layers.append({"hidden_states": layer, "massive_dim": dim, "sink_min": round(float(sink.min()), 3),
                       "others_max": round(float(rest.max()), 3),
                       "others_max_any_dim": round(float(r[:, others].max()), 3),
                       "is_sink": bool(sink.min() > tau >= rest.max())})
    return {"tau": tau, "d_model": d, "n_scenes": n, "layers": layers,
            "sink_layers": [x["hidden_states"] for x in layers if x["is_sink"]],
            "sink_dims": sorted({x["massive_dim"] for x in layers if x["is_sink"]})}


@torch.no_grad()
def measure_heads(model: Any, vision: tuple[tuple[int, int], ...] = VISION_HEADS, n: int = 256,
                  seed: int = 3) -> dict[str, Any]:
    """Each LM head's attention mass on the image tokens on ``n`` held-out scenes (eager attention, restored
    after): ``text_queries`` = mean over the question's positions (after the image), ``last`` = at the last one.
    ``vision_min`` / ``text_max``: the smallest of the vision heads and the largest of the others (``last``)."""
    ids, px, _, _, _ = _batch(seed * 1_000_003, n, "held_out", one_token=has_one_token_questions(model))
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out, _ = answer_logits(model, ids, px, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)
    mass = image_attention(out.attentions, ids)                              # [L, H, B, T]
    first_text = 1 + S.N_PATCHES
    rows = {f"L{l}.H{h}": {"text_queries": round(float(mass[l, h, :, first_text:].mean()), 4),
                           "last": round(float(mass[l, h, :, -1].mean()), 4), "vision": (l, h) in set(vision)}
            for l in range(mass.shape[0]) for h in range(mass.shape[1])}
    return {"n_scenes": n, "per_head": rows,
            "vision_min_last": min(r["last"] for r in rows.values() if r["vision"]),
            "text_max_last": max(r["last"] for r in rows.values() if not r["vision"])}


def truth_record(model: Any, eval_n: int = 512,
                 vision: tuple[tuple[int, int], ...] | None = None) -> dict[str, Any]:
    """The ``truth.json`` of a trained model: the measured sink (:func:`measure_sink`), where the objects are
    (image token positions), the held-out accuracy (:func:`evaluate`) and, when ``vision`` heads were planted,
    those heads with every head's measured attention on the image (:func:`measure_heads`)."""
    accuracy = evaluate(model, n=eval_n)
    sink = measure_sink(model, n=min(256, eval_n))
    truth = {"sink": {"patch": S.SINK_CELL, "dims": [SINK_DIM], "planted_layers": list(SINK_LAYERS),
                      "measured_layers": sink["sink_layers"], "tau": sink["tau"],
                      "criterion": "max over the massive dims of |h / rms(h)| > tau at that image token (VAR)",
                      "layer_index": "hidden_states index of the LM: 0 = embeddings, i = after block i-1 "
                                     "(= Site resid_pre.i)", "measured": sink},
             "objects": "each object occupies exactly the image patch of its cell (interp.vlm.scenes); the "
                        "vision tower is per-patch, so only that patch's image embedding depends on it",
             "image_token_positions": list(range(1, 1 + S.N_PATCHES)),
             "object_token_position": "1 + cell (after <bos>; patch c is the c-th image token)",
             "grid": S.GRID, "patch_px": S.CELL, "image_px": S.IMAGE, "accuracy": accuracy}
    if vision is not None:
        truth["heads"] = {"vision": [f"L{l}.H{h}" for l, h in vision],
                          "construction": "in training the other (text) heads' attention on image tokens is "
                                          "penalised, the vision heads' too except at the last position, and "
                                          "heads are dropped out (interp.vlm.train)",
                          "image_attention": measure_heads(model, vision, n=min(256, eval_n))}
    return truth


def train_vlm(config: VLMTrainConfig, folder: str | Path, *,
              log: Callable[[int, float], None] | None = None, eval_n: int = 512) -> Path:
    """Train the VLM and save it as a Hugging Face Llava folder (model, tokenizer, processor), with
    ``interp_source.json`` (settings, seconds, losses, held-out accuracy) and ``truth.json`` (the measured sink).

    Args:
        config: :class:`VLMTrainConfig`.
        folder: written atomically; an existing folder is replaced.
        log: optional ``log(step, answer_loss)`` every 100 steps and at the last (injected, never printed here).
        eval_n: held-out scenes per question kind for the recorded accuracy.
    """
    import shutil

    from interp._fs import atomic_dir

    t0 = time.perf_counter()
    folder = Path(folder)
    model = build_model(config)
    if config.text_attention_weight > 0:
        model.set_attn_implementation("eager")  # attention probabilities for the heads' penalty
    model.train()
    text = tuple(text_heads(config))
    dropout_gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(config.warmup_steps, 1)

    def lr_at(step: int) -> float:   # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[tuple[int, float, float]] = []
    for step in range(config.steps):
        kinds = ("colour",) if step < config.colour_only_steps else S.KINDS
        ids, px, ans, _, _ = _batch(config.seed * 1_000_003 + step, config.batch_size, "train", kinds,
                                    config.one_token_questions)
        # the sink is planted once the colour-only phase is over (planting it from step 0 kept the answer loss
        # at chance through the colour-only phase)
        sink_weight = config.sink_weight if step >= config.colour_only_steps else 0.0
        # the heads' penalty and dropout from heads_from_step on, ramped up linearly over heads_ramp_steps
        ramp = min(1.0, max(0.0, (step - config.heads_from_step + 1) / config.heads_ramp_steps))
        with HeadDropout(model, list(text), config.text_head_dropout * ramp, dropout_gen), \
                HeadDropout(model, list(config.vision_heads), config.vision_dropout * ramp, dropout_gen,
                            but_last=True):
            loss, ce = answer_loss(model, ids, px, ans, sink_weight, config.text_attention_weight * ramp, text,
                                   tuple(config.vision_heads) if config.vision_last_only else ())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == config.steps - 1:
            losses.append((step, round(float(loss.detach()), 4), round(float(ce.detach()), 4)))
            if log is not None:
                log(step, float(ce.detach()))
    model.eval()
    model.set_attn_implementation("sdpa")       # the default of a plain from_pretrained
    seconds = round(time.perf_counter() - t0, 1)
    planted = config.vision_heads if config.text_attention_weight > 0 else None
    truth = truth_record(model, eval_n=eval_n, vision=planted)
    accuracy = truth["accuracy"]
    source = {"toy": "vlm", "train": dataclasses.asdict(config), "seconds": seconds,
              "threads": torch.get_num_threads(), "losses": losses, "held_out_accuracy": accuracy}
    if folder.exists():
        shutil.rmtree(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        build_processor(build_tokenizer(config.one_token_questions)).save_pretrained(tmp)
        (tmp / "interp_source.json").write_text(json.dumps(source, indent=2))
        (tmp / "truth.json").write_text(json.dumps(truth, indent=2))
    return folder


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    import argparse

    ap = argparse.ArgumentParser(prog="python -m interp.vlm.train", description="train the VLM (module docstring)")
    ap.add_argument("folder")
    ap.add_argument("--one-token-questions", action="store_true", help="each question one token")
    ap.add_argument("--n-heads", type=int, default=VLMTrainConfig.n_heads, help="heads per LM layer")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        config = VLMTrainConfig(one_token_questions=a.one_token_questions, n_heads=a.n_heads)
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")
    folder = train_vlm(config, a.folder, log=lambda s, l: print(f"step {s} answer loss {l:.4f}", flush=True))
    print((folder / "truth.json").read_text())


if __name__ == "__main__":
    main()
