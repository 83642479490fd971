"""Image inputs of vision-language models: tokenize prompts with images, feed the images to forward passes.

``interp.tokenize(model, texts, images=...)`` (this module's :func:`tokenize_vlm`) runs the
model's own processor prompt by prompt, so each prompt's image placeholder (``<image>`` for
LLaVA, ``<start_of_image>`` for Gemma 3) expands exactly as the processor expands it, and
returns a right-padded :class:`VisionBatch`: the input ids, ``pixel_values`` of every image in
prompt order, and the image-token positions (``tokens == image_token_id``).

Images are image files (PNG, JPEG, anything Pillow opens), ``PIL.Image`` s, ``numpy`` arrays
(``[H, W, 3]`` or ``[H, W]``, ``uint8`` 0-255 or float 0-1) or ``torch`` tensors (``[3, H, W]``
or ``[H, W, 3]``, same value ranges). Per prompt: one image, ``None`` (a text-only prompt) or a
list of images (one per placeholder, in order).

Images reach the model through a scope, :func:`feeding` (or ``batch.feed(model)``): while it
is open, every forward pass of the model whose rows are rows of the batch (also repeated, as the
engine lays out worlds: row ``r`` is prompt ``r % batch``) gets those rows' images (and, for
Gemma 3, the ``token_type_ids`` that let an image's tokens attend to each other), so hooks,
:func:`interp.collect` and :func:`interp.engine.run` address image-token positions like any
other position. A pass whose rows are not the batch's rows and hold image tokens is refused.

Special-token text in VLM prompts is mapped to the special tokens (the placeholder must be);
right padding keeps each prompt's activations equal to running it alone.

Example:
    >>> import numpy as np
    >>> from interp import load_model, tokenize
    >>> model = load_model("toy:llava")
    >>> red = np.zeros((32, 32, 3), dtype=np.uint8); red[..., 0] = 255
    >>> batch = tokenize(model, ["<image> Is it red?", "Hi"], images=[red, None])
    >>> batch.pixel_values.shape, batch.images_per_prompt     # one image, 16 tokens (a 4x4 grid)
    (torch.Size([1, 3, 32, 32]), (1, 0))
    >>> batch.image_mask.sum(1).tolist()
    [16, 0]
    >>> with batch.feed(model):
    ...     logits = model(batch.tokens)
    >>> logits.shape
    torch.Size([2, 28, 260])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError, DataError
from interp.models import TokenBatch

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["VisionBatch", "tokenize_vlm", "load_image", "is_vlm", "image_token_id", "feeding"]


@dataclass(frozen=True)
class VisionBatch(TokenBatch):
    """Right-padded tokens of prompts with images (a :class:`~interp.models.TokenBatch`).

    Attributes:
        pixel_values: ``[n_images, 3, H, W]`` every image of the batch, in prompt order (``None``: no image).
        image_token_id: the id of the image tokens (``input_ids == image_token_id``).
        images_per_prompt: number of images of each prompt.
        image_sizes: ``(height, width)`` of each image as given (before the processor), in batch order.
        token_type_ids: ``[batch, pos]`` 1 at image tokens, for models whose images attend
            bidirectionally (Gemma 3); ``None`` otherwise.
    """

    pixel_values: Any = None
    image_token_id: int = -1
    images_per_prompt: tuple[int, ...] = ()
    image_sizes: tuple[tuple[int, int], ...] = ()
    token_type_ids: Any = field(default=None, repr=False)

    @property
    def image_mask(self) -> Any:
        """``[batch, pos]`` bool, True at image tokens."""
        return (self.tokens == self.image_token_id) & self.mask

    def image_positions(self, row: int = 0) -> tuple[int, ...]:
        """Positions of the image tokens of prompt ``row``."""
        return tuple(int(p) for p in self.image_mask[row].nonzero().flatten())

    @property
    def images_digest(self) -> str | None:
        """sha256 of the pixel values and how many images each prompt has (``None`` without images)."""
        import hashlib

        if self.pixel_values is None:
            return None
        h = hashlib.sha256(repr(self.images_per_prompt).encode())
        h.update(self.pixel_values.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def model_inputs(self, rows: Sequence[int] | None = None, width: int | None = None) -> dict[str, Any]:
        """Forward kwargs (``pixel_values``, ``token_type_ids``) of prompts ``rows`` (default all), cut to ``width``."""
        import torch

        rows = list(range(len(self))) if rows is None else [int(r) for r in rows]
        width = self.tokens.shape[1] if width is None else width
        out: dict[str, Any] = {}
        if self.pixel_values is not None:
            start = [0]
            for n in self.images_per_prompt:
                start.append(start[-1] + n)
            pick = [i for r in rows for i in range(start[r], start[r + 1])]
            if pick:
                out["pixel_values"] = self.pixel_values[torch.tensor(pick, dtype=torch.long)]
        if self.token_type_ids is not None and "pixel_values" in out:
            out["token_type_ids"] = self.token_type_ids[rows, :width]
        return out

    def feed(self, model: Model, rows: Sequence[int] | None = None) -> contextlib.AbstractContextManager:
        """Scope in which ``model``'s forward passes over these prompts get their images (see :func:`feeding`)."""
        return feeding(model, self, rows)


def is_vlm(model: Model) -> bool:
    """Whether ``model`` takes images (the bridge marks multimodal models; a processor is attached)."""
    return bool(getattr(model.cfg, "is_multimodal", False))


def image_token_id(model: Model) -> int:
    """The id of the image tokens in a VLM's input ids (from its Hugging Face config)."""
    hf = model.original_model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(hf, name, None)
        if value is not None:
            return int(value)
    raise ConfigError(f"{_name(model)}: the config names no image token id (image_token_id / image_token_index)")


def _name(model: Model) -> str:
    info = getattr(model, "interp_info", None)
    return info.spec if info is not None else type(model).__name__


def load_image(image: Any, where: str = "image") -> Any:
    """An RGB ``PIL.Image`` from a file path, a PIL image, a numpy array or a torch tensor.

    Raises:
        DataError: a missing or unreadable file (named), or an array of an unusable shape or dtype.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise DataError(f"{where}: no image file {str(path)!r}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{where}: cannot read the image file {str(path)!r}: {e}") from e
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            if t.dim() == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
                t = t.permute(1, 2, 0)
            image = t.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if not isinstance(image, np.ndarray):
        raise DataError(f"{where}: expected an image file path, a PIL image, a numpy array or a torch tensor, "
                        f"got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3) or min(arr.shape[:2]) < 1:
        raise DataError(f"{where}: expected an array [H, W, 3] or [H, W] (or a tensor [3, H, W]), got shape "
                        f"{tuple(arr.shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: the image array holds NaN or inf")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype.kind in "ui":
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{where}: integer image values must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    else:
        raise DataError(f"{where}: unsupported image dtype {arr.dtype}")
    return Image.fromarray(arr).convert("RGB")


def _per_prompt(images: Any, n: int) -> list[list[Any]]:
    """Normalise ``images`` to one list of images per prompt."""
    if images is None:
        return [[] for _ in range(n)]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) != n:
        raise DataError(f"images: {len(images)} entries for {n} prompts; give one per prompt (None for none)")
    return [[] if im is None else list(im) if isinstance(im, (list, tuple)) else [im] for im in images]


#: processor outputs interp passes on (input ids and the mask are rebuilt; the rest go to forward).
_PASSED = frozenset({"input_ids", "attention_mask", "pixel_values", "token_type_ids"})


def _placeholder(processor: Any) -> str:
    tok = processor.tokenizer
    return getattr(tok, "boi_token", None) or getattr(processor, "image_token", None) or tok.image_token


def tokenize_vlm(model: Model, prompts: Sequence[str], images: Any = None, *, prepend_bos: bool | None = None,
                 max_len: int | None = None) -> VisionBatch:
    """Tokenize prompts with their images through the model's processor (see the module docstring).

    Args:
        model: a vision-language model from :func:`interp.load_model`.
        prompts: the prompts (strings), each with one image placeholder per image.
        images: per prompt: an image, ``None`` or a list of images (a single image for a single prompt).
        prepend_bos: as in :func:`interp.models.tokenize` (``None`` = the model's default).
        max_len: maximum tokens per prompt after expansion; ``None`` = the model's context length.

    Raises:
        DataError: a text-only model given images; a prompt whose placeholders and images disagree in
            number (both named); an unreadable image file (named); images the processor cannot turn into
            the vision tower's input size; prompts longer than ``max_len``.
    """
    import torch

    n_images = sum(len(x) for x in _per_prompt(images, len(prompts)))
    if not is_vlm(model):
        if n_images:
            raise DataError(f"model {_name(model)} is a text-only model; it takes no images (got {n_images})")
        raise DataError(f"model {_name(model)} is not a vision-language model")
    processor = getattr(model, "processor", None)
    if processor is None:
        raise ConfigError(f"model {_name(model)}: no processor was loaded with it (its folder needs "
                          "processor_config.json / preprocessor_config.json)")
    per = _per_prompt(images, len(prompts))
    mark = _placeholder(processor)
    tok = processor.tokenizer
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    max_len = max_len or model.cfg.n_ctx
    img_id = image_token_id(model)
    vision = getattr(model.original_model.config, "vision_config", None)
    want = getattr(vision, "image_size", None)
    want = tuple(want) if isinstance(want, (list, tuple)) else (want, want) if want else None
    rows, pixels, types, sizes = [], [], [], []
    for i, (text, ims) in enumerate(zip(prompts, per)):
        if not isinstance(text, str):
            raise DataError(f"prompt {i} is {type(text).__name__}; expected a string")
        count = text.count(mark)
        if count != len(ims):
            raise DataError(f"prompt {i} has {count} image placeholder(s) {mark!r} but {len(ims)} image(s) were "
                            f"given: {text[:60]!r}")
        pil = [load_image(im, f"prompt {i} image {j}" + (f" ({im})" if isinstance(im, (str, Path)) else ""))
               for j, im in enumerate(ims)]
        sizes += [(p.height, p.width) for p in pil]
        try:
            out = processor(text=[text], images=[pil] if pil else None, add_special_tokens=False,
                            return_tensors="pt")
        except (ValueError, TypeError, RuntimeError) as e:
            got = ", ".join(f"{p.width}x{p.height}" for p in pil)
            raise DataError(f"prompt {i}: the processor cannot take its image(s) ({got} pixels): "
                            f"{str(e).splitlines()[0]}") from e
        unknown = sorted(set(out) - _PASSED)
        if unknown:
            raise ConfigError(f"model {_name(model)}: its processor also returns {', '.join(unknown)}, which interp "
                              "does not pass to the model (supported: LLaVA-style and Gemma 3 processors)")
        ids = out["input_ids"][0].tolist()
        if bos:
            if tok.bos_token_id is None:
                raise DataError("prepend_bos=True but the tokenizer has no BOS token")
            ids = [tok.bos_token_id, *ids]
        if not ids:
            raise DataError(f"prompt {i} is empty (no tokens): {text!r}")
        if len(ids) > max_len:
            raise DataError(f"prompt {i} has {len(ids)} tokens with its image tokens, more than the limit of "
                            f"{max_len}: {text[:60]!r}")
        if pil:
            pv = out["pixel_values"]
            if want and tuple(pv.shape[-2:]) != want:
                raise DataError(f"prompt {i}: the processor made {pv.shape[-1]}x{pv.shape[-2]} pixel images from "
                                f"{', '.join(f'{p.width}x{p.height}' for p in pil)}, but the vision tower takes "
                                f"{want[1]}x{want[0]}")
            pixels.append(pv)
        tt = out.get("token_type_ids")
        types.append(([0] if bos else []) + (tt[0].tolist() if tt is not None else [0] * len(out["input_ids"][0])))
        rows.append(ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    tti = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, types)):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        tti[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    device = getattr(model.cfg, "device", None)
    dtype = next(model.parameters()).dtype
    pixel_values = torch.cat(pixels).to(dtype) if pixels else None
    if device is not None:
        tokens, lengths, tti = tokens.to(device), lengths.to(device), tti.to(device)
        pixel_values = pixel_values.to(device) if pixel_values is not None else None
    uses_types = "token_type_ids" in getattr(processor, "model_input_names", ())
    return VisionBatch(tokens=tokens, lengths=lengths, texts=tuple(prompts), pixel_values=pixel_values,
                       image_token_id=img_id, images_per_prompt=tuple(len(x) for x in per),
                       image_sizes=tuple(sizes), token_type_ids=tti if uses_types else None)


def _with_image_blocks(mask: Any, types: Any, model: Model) -> Any:
    """An explicit batch-1 boolean mask (the engine's, by layer type) plus each image's block both ways.

    Gemma 3 builds ``full = causal | block`` and ``sliding = window & (causal | block)`` from
    ``token_type_ids``; an explicit mask skips that, so the same blocks are added here. Every row of
    the pass must share one image layout (the mask has one row).
    """
    import torch

    if not bool((types == types[:1]).all()):
        raise ConfigError(f"model {_name(model)}: image tokens attend bidirectionally and this pass gives one "
                          "explicit attention mask for rows whose images lie at different positions; run prompts "
                          "with the same image layout together")
    img = types[0] == 1
    start = img & ~torch.nn.functional.pad(img, (1, 0))[:-1]
    group = torch.where(img, torch.cumsum(start.long(), 0), 0)
    block = (group[:, None] == group[None, :]) & img[:, None] & img[None, :]
    i = torch.arange(types.shape[1], device=types.device)
    from interp.arch import arch_facts

    window = arch_facts(model).sliding_window

    def add(m: Any, local: bool) -> Any:
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() != 4 or m.shape[0] != 1:
            raise ConfigError(f"model {_name(model)}: image tokens attend bidirectionally; cannot add them to an "
                              f"explicit attention mask of {getattr(m, 'dtype', type(m).__name__)} "
                              f"{tuple(getattr(m, 'shape', ()))} (expected a batch-1 boolean mask)")
        extra = block & ((i[:, None] - i[None, :]) < window) if local and window else block
        return m | extra[-m.shape[-2]:, -m.shape[-1]:].to(m.device)[None, None]

    if isinstance(mask, dict):
        return {k: add(v, k == "sliding_attention") for k, v in mask.items()}
    return add(mask, False)


@contextlib.contextmanager
def feeding(model: Model, batch: VisionBatch, rows: Sequence[int] | None = None) -> Iterator[None]:
    """Scope: forward passes of ``model`` over rows of ``batch`` get those rows' images (hook removed in ``finally``).

    A pass of ``R`` rows reads row ``r`` as prompt ``rows[r % len(rows)]`` (``rows`` default: every
    prompt of the batch, in order), which covers a plain batch, the engine's blocks of worlds and its
    one-row stub. Each row's ids are checked against the batch's; a pass holding image tokens whose
    rows are not the batch's raises :class:`~interp.errors.DataError`. A pass with no image tokens
    runs unchanged. On a model whose images attend bidirectionally (Gemma 3), an explicit batch-1
    mask (the engine's worlds entering at a layer) gets each image's block added, so such passes
    compute what plain passes do; its rows must then share one image layout (else ConfigError).
    """
    import torch

    order = list(range(len(batch))) if rows is None else [int(r) for r in rows]
    if not order:
        raise DataError("feeding: no rows")
    target = model.original_model

    def pre(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        ids = args[0] if args else kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or kwargs.get("pixel_values") is not None:
            return None
        if not bool((ids == batch.image_token_id).any()):
            return None
        n_rows, width = ids.shape
        prompts = [order[r % len(order)] for r in range(n_rows)]
        ref = batch.tokens[prompts].to(ids.device)
        if width > ref.shape[1] or not torch.equal(ids, ref[:, :width]):
            raise DataError(f"a forward pass of {n_rows} rows x {width} tokens with image tokens does not match "
                            f"the fed batch's prompts {prompts[:8]}{'...' if n_rows > 8 else ''}; pass the batch's "
                            "tokens (in its order, or repeated)")
        extra = {k: v.to(ids.device) for k, v in batch.model_inputs(prompts, width).items()}
        mask = kwargs.get("attention_mask")
        if "token_type_ids" in extra and isinstance(mask, (dict, torch.Tensor)) and \
                (isinstance(mask, dict) or mask.dim() == 4):
            kwargs = {**kwargs, "attention_mask": _with_image_blocks(mask, extra["token_type_ids"], model)}
        return args, {**kwargs, **extra}

    handle = target.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
