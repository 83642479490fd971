"""Tiny random vision-language models built from a config, with a processor made offline.

Two architectures the TransformerLens bridge wraps (``toy:llava``, ``toy:gemma3vl``), each a
real Hugging Face ``*ForConditionalGeneration`` with random weights from a seeded generator,
written once as a local folder (weights, config, tokenizer, image processor, processor) and
loaded through the same path as any local VLM folder:

* ``llava``: ``LlavaForConditionalGeneration``: a CLIP vision tower (32x32 pixels, 8x8
  patches: a 4x4 grid, CLS dropped) and a 2-layer MLP projector into a Llama text model; the
  processor expands each ``<image>`` in the text into 16 ``<image>`` tokens.
* ``gemma3vl``: ``Gemma3ForConditionalGeneration``: a SigLIP tower (32x32 pixels, 8x8 patches)
  average-pooled to ``mm_tokens_per_image`` = 4 soft tokens (a 2x2 grid) and a Gemma-3 text model;
  the processor expands ``<start_of_image>`` into ``\\n\\n<start_of_image>`` + 4
  ``<image_soft_token>`` + ``<end_of_image>\\n\\n``. Image tokens attend to each other both
  ways within an image (``token_type_ids``), as Gemma 3 does.

The tokenizer is the toys' byte tokenizer (:func:`interp.toy.byte_tokenizer`) plus the image
special tokens from id 259 on; the image processors are built from their config (no hub).
The text sizes come from :class:`interp.toy.ToyConfig` (``toy:llava,n_layers=3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["VLM_ARCHS", "IMAGE_SIZE", "PATCH", "vlm_tokenizer", "hf_vlm_config", "vlm_processor",
           "write_vlm_folder"]

#: toy arch -> the image special tokens its tokenizer adds (named as the processors read them).
VLM_ARCHS: dict[str, dict[str, str]] = {
    "llava": {"image_token": "<image>"},
    "gemma3vl": {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"},
}
IMAGE_SIZE = 32
PATCH = 8
_GEMMA_TOKENS = 4          # 2x2 soft tokens per image (the 4x4 patch grid pooled by 2)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=IMAGE_SIZE, patch_size=PATCH)
_MEAN, _STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def vlm_tokenizer(arch: str) -> Any:
    """The toys' byte tokenizer plus ``arch``'s image special tokens (ids 259, 260, ...)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from interp.toy import byte_tokenizer

    specials = VLM_ARCHS[arch]
    backend = byte_tokenizer().backend_tokenizer
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", extra_special_tokens=dict(specials))


def hf_vlm_config(cfg: Any) -> Any:
    """The Hugging Face config of a VLM toy (``cfg``: an :class:`interp.toy.ToyConfig` with a VLM arch)."""
    from interp.toy import SLIDING_WINDOW

    tok = vlm_tokenizer(cfg.arch)
    ids = dict(vocab_size=len(tok), bos_token_id=256, eos_token_id=257, pad_token_id=258)
    kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.arch == "llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        text = LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
                           num_attention_heads=cfg.n_heads, num_key_value_heads=kv,
                           max_position_embeddings=cfg.n_ctx, tie_word_embeddings=False, **ids)
        return LlavaConfig(vision_config=CLIPVisionConfig(**_VISION, projection_dim=32), text_config=text,
                           image_token_id=tok.image_token_id, vision_feature_layer=-1,
                           vision_feature_select_strategy="default", projector_hidden_act="gelu",
                           tie_word_embeddings=False, architectures=["LlavaForConditionalGeneration"], **ids)
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    types = ["sliding_attention"] + ["full_attention"] * (cfg.n_layers - 1)
    text = Gemma3TextConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
                            num_attention_heads=cfg.n_heads, num_key_value_heads=kv,
                            head_dim=cfg.d_model // cfg.n_heads, max_position_embeddings=cfg.n_ctx,
                            sliding_window=SLIDING_WINDOW, layer_types=types, **ids)
    return Gemma3Config(vision_config=SiglipVisionConfig(**_VISION), text_config=text,
                        mm_tokens_per_image=_GEMMA_TOKENS, boi_token_id=tok.boi_token_id,
                        eoi_token_id=tok.eoi_token_id, image_token_id=tok.image_token_id,
                        architectures=["Gemma3ForConditionalGeneration"], **ids)


def vlm_processor(arch: str, *, image_size: int = IMAGE_SIZE, patch: int = PATCH,
                  image_tokens: int = _GEMMA_TOKENS) -> Any:
    """The processor of a VLM toy: its tokenizer plus an image processor built from config (no hub).

    ``image_size`` / ``patch`` (LLaVA) and ``image_tokens`` (Gemma 3's pooled tokens per image) must
    match the vision config of the model it is saved with (a trained checkpoint may choose its own).
    """
    if arch not in VLM_ARCHS:
        from interp.errors import ConfigError, nearest

        raise ConfigError(f"unknown VLM toy arch {arch!r}.{nearest(arch, VLM_ARCHS)} Known: {', '.join(VLM_ARCHS)}")
    tok = vlm_tokenizer(arch)
    if arch == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        image = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size},
                                      image_mean=_MEAN, image_std=_STD)
        return LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              image_token=tok.image_token)
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    image = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=_MEAN,
                                    image_std=_STD)
    return Gemma3Processor(image_processor=image, tokenizer=tok, image_seq_length=image_tokens)


def write_vlm_folder(cfg: Any, tmp: Path) -> None:
    """Build the random VLM of ``cfg`` (seeded, global RNG untouched) and save it with its processor in ``tmp``."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        model = AutoModelForImageTextToText.from_config(hf_vlm_config(cfg), dtype=torch.float32)
        proj = getattr(model.model.multi_modal_projector, "mm_input_projection_weight", None)
        if proj is not None:  # Gemma 3 initialises its projection to zeros: images would have no effect
            with torch.no_grad():
                proj.normal_(0.0, 1.0 / proj.shape[0] ** 0.5)
    model.save_pretrained(tmp)
    vlm_processor(cfg.arch).save_pretrained(tmp)
