"""Devices and precision: resolve ``--device`` / ``--dtype`` and refuse what this machine cannot do.

* :func:`resolve_device` — ``None``/``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``,
  ``"cuda:N"``, ``"mps"``; a device that does not exist here is a :class:`~interp.errors.ConfigError`
  naming the devices that do (:func:`available_devices`).
* :func:`resolve_dtype` — ``float32`` / ``bfloat16`` / ``float16`` / ``float64`` (and ``fp32``, ``bf16``, ``fp16``,
  ``half``) or a ``torch.dtype``; anything else names the three.
* :func:`check_dtype` — runs the operations a transformer forward needs (matmul, softmax, layer and
  RMS norm, GELU/SiLU, attention) once on tiny tensors of that dtype on that device; one that fails is
  a ConfigError naming the operation and the dtypes that do work there. :func:`interp.load_model`
  calls all three before any weights are read, so a bad device or dtype fails in a second and
  nothing is written.

* :func:`resolve_device_map` — a ``device_map`` for the bridge's own multi-device loading
  (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``, or a JSON object / dict of module name ->
  device); a strategy without CUDA devices, a device that does not exist here, disk/meta offload and
  cpu+CUDA mixes (which the bridge refuses) are ConfigErrors naming the alternatives.

The library never calls ``.cuda()``: tensors follow the model (``next(model.parameters()).device``)
or an argument.

Example:
    >>> from interp.devices import resolve_device, resolve_dtype
    >>> str(resolve_device("cpu")), resolve_dtype("bf16")
    ('cpu', torch.bfloat16)
    >>> resolve_dtype("float8")
    Traceback (most recent call last):
    ...
    interp.errors.ConfigError: dtype 'float8' is not supported; expected one of float32, bfloat16, float16, float64
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from interp.errors import ConfigError, nearest

__all__ = ["DTYPES", "available_devices", "resolve_device", "resolve_dtype", "check_dtype", "dtype_name",
           "DEVICE_MAP_STRATEGIES", "resolve_device_map", "device_map_devices"]

#: The string device maps of accelerate (through ``from_pretrained``), all spreading layers over CUDA devices.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_MAP_EXAMPLE = "or a JSON object of module -> device such as '{\"\": \"cpu\"}' or '{\"\": 0}'"

#: The dtypes interp runs models in.
DTYPES = ("float32", "bfloat16", "float16", "float64")
_ALIASES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
            "float16": "float16", "fp16": "float16", "half": "float16", "float64": "float64", "fp64": "float64",
            "double": "float64"}


def available_devices() -> list[str]:
    """Devices usable here: ``cpu``, then ``cuda:0`` ... and ``mps`` where present."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: Any = None, *, arg: str = "device") -> Any:
    """A ``torch.device`` that exists here; ``None``/``""``/``"auto"`` = the first CUDA device, else CPU.

    Raises:
        ConfigError: an unknown device type (``"tpu"``), CUDA/MPS absent, or a CUDA index beyond the
            devices present; the message names the devices available here.
    """
    import torch

    have = available_devices()
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device(have[1] if len(have) > 1 and have[1].startswith("cuda") else "cpu")
    text = str(device).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{arg} {text!r} is not a device name;{nearest(text, have) or ''} available here: "
                          f"{', '.join(have)}") from e
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{arg} {text!r}: no CUDA device here (torch {torch.__version__}, "
                              f"cuda {torch.version.cuda or 'not compiled in'}); available here: {', '.join(have)}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{arg} {text!r}: this machine has {n} CUDA device(s); available here: {', '.join(have)}")
        return torch.device("cuda", dev.index if dev.index is not None else 0)
    if dev.type == "mps" and "mps" in have:
        return dev
    raise ConfigError(f"{arg} {text!r}: {dev.type} devices are not available here; available here: {', '.join(have)}")


def resolve_dtype(dtype: Any = None, *, arg: str = "dtype") -> Any:
    """A ``torch.dtype`` among :data:`DTYPES`; ``None``/``""`` = float32.

    Raises:
        ConfigError: any other name or dtype (the three supported ones named).
    """
    import torch

    if dtype is None or dtype == "":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        name = dtype_name(dtype)
    else:
        name = _ALIASES.get(str(dtype).strip().lower().replace("torch.", ""), "")
    if name not in DTYPES:
        raise ConfigError(f"{arg} {str(dtype).replace('torch.', '')!r} is not supported; expected one of "
                          f"{', '.join(DTYPES)}")
    return getattr(torch, name)


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).replace("torch.", "")


def _ops() -> list[tuple[str, Callable[[Any], Any]]]:
    import torch
    import torch.nn.functional as F

    def attention(x: Any) -> Any:
        q = x[None, None]
        return F.scaled_dot_product_attention(q, q, q, is_causal=True)

    return [("matmul", lambda x: x @ x.T), ("softmax", lambda x: x.softmax(-1)),
            ("layer_norm", lambda x: F.layer_norm(x, x.shape[-1:])),
            ("rms_norm", lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
            ("gelu", F.gelu), ("silu", F.silu), ("attention", attention),
            ("embedding", lambda x: F.embedding(torch.tensor([0, 1], device=x.device), x))]


#: Operations checked per (device, dtype); tests may add one that fails.
OPS: list[tuple[str, Callable[[Any], Any]]] = []


@functools.lru_cache(maxsize=None)
def _failure(device: str, dtype: str) -> str | None:
    """The first operation that fails in ``dtype`` on ``device`` (``"op: message"``), or None."""
    import torch

    x = torch.linspace(-1, 1, 32, device=device).reshape(4, 8).to(getattr(torch, dtype))
    for name, op in (OPS or _ops()):
        try:
            op(x)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            return f"{name}: {str(e).splitlines()[0][:120]}"
    return None


def check_dtype(dtype: Any, device: Any, *, arg: str = "dtype") -> None:
    """Refuse a dtype whose basic operations fail on ``device`` (message names the dtypes that work there).

    Raises:
        ConfigError: e.g. ``dtype float16 is not supported on cpu here (matmul: "addmm" not implemented for
            'Half'); use one of float32, bfloat16``.
    """
    import torch

    name = dtype_name(resolve_dtype(dtype, arg=arg))
    dev = str(resolve_device(device))
    failed = _failure(dev, name)
    if failed is None:
        return
    ok = [d for d in DTYPES if _failure(dev, d) is None]
    raise ConfigError(f"{arg} {name} is not supported on {dev} here ({failed}); use one of "
                      f"{', '.join(ok) or 'none'} (torch {torch.__version__})")


def resolve_device_map(device_map: Any, *, device: Any = None, arg: str = "device_map",
                       device_arg: str = "device") -> str | dict[str, Any] | None:
    """A device map the bridge can apply here (``None``/``""``: none, load on one device).

    Args:
        device_map: a strategy name (:data:`DEVICE_MAP_STRATEGIES`), a JSON object text, or a dict of
            module name (``""`` = the whole model) -> device (``"cpu"``, ``"cuda:1"``, or a CUDA index).
        device: the single-device option; giving both is an error (they are exclusive in the bridge).

    Raises:
        ConfigError: both given; an unknown strategy or bad JSON; a strategy with no CUDA device here; a
            device that does not exist here; disk/meta offload; cpu and CUDA targets mixed.

    Example:
        >>> resolve_device_map('{"": "cpu"}')
        {'': 'cpu'}
    """
    import json

    if device_map is None or (isinstance(device_map, str) and not device_map.strip()):
        return None
    if device is not None and str(device).strip().lower() not in ("", "auto"):
        raise ConfigError(f"{arg} and {device_arg} {str(device)!r} are exclusive: give one (a device map places every "
                          "module itself)")
    have = available_devices()
    dm = device_map
    if isinstance(dm, str):
        text = dm.strip()
        if text.startswith("{"):
            try:
                dm = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{arg} {text!r}: not valid JSON ({e.msg}, column {e.colno}); expected "
                                  f"{', '.join(DEVICE_MAP_STRATEGIES)}, {_MAP_EXAMPLE}") from None
        else:
            low = text.lower()
            if low not in DEVICE_MAP_STRATEGIES:
                raise ConfigError(f"{arg} {text!r}: expected one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                                  f"{_MAP_EXAMPLE}.{nearest(low, DEVICE_MAP_STRATEGIES) or ''}")
            if not any(d.startswith("cuda") for d in have):
                raise ConfigError(f"{arg} {low}: spreads the layers over CUDA devices and there are none here "
                                  f"(available: {', '.join(have)}); use --device cpu, or a map such as "
                                  "'{\"\": \"cpu\"}'")
            return low
    if not isinstance(dm, dict) or not dm:
        raise ConfigError(f"{arg}: expected {', '.join(DEVICE_MAP_STRATEGIES)} {_MAP_EXAMPLE}, got {device_map!r}")
    out: dict[str, Any] = {}
    for key, value in dm.items():
        where = f"{arg}[{key!r}]"
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} = {value!r}: expected a device name (cpu, cuda:N) or a CUDA index")
        if isinstance(value, str) and value.strip().lower() in ("disk", "meta"):
            raise ConfigError(f"{where} = {value!r}: the TransformerLens bridge does not support disk/meta offload "
                              f"(its wrapped components bypass accelerate's hooks); use cpu or a CUDA device "
                              f"(available: {', '.join(have)})")
        dev = resolve_device(f"cuda:{value}" if isinstance(value, int) else value, arg=where)
        out[str(key)] = value if isinstance(value, int) else str(dev)
    kinds = {"cuda" if isinstance(v, int) else str(v).split(":")[0] for v in out.values()}
    if "cpu" in kinds and len(kinds) > 1:
        raise ConfigError(f"{arg}: cpu and {'/'.join(sorted(kinds - {'cpu'}))} targets mixed, which the bridge "
                          "refuses; put every module on CUDA devices, or the whole model on one device")
    return out


def device_map_devices(device_map: str | dict[str, Any]) -> list[str]:
    """The devices a resolved map loads onto (a strategy: every CUDA device here)."""
    if isinstance(device_map, str):
        return [d for d in available_devices() if d.startswith("cuda")]
    return sorted({f"cuda:{v}" if isinstance(v, int) else str(v) for v in device_map.values()})
