"""The one CLI error boundary and the argument checks every command runs before model work.

:func:`run` executes the ``interp`` app: an :class:`~interp.errors.InterpError` (an expected
failure: bad input, bad arguments, a folder that cannot be used) is printed as one line
``interp: error: ...`` and exits 2, as do operating-system refusals to write (disk full,
read-only file system, permission denied, a path under a file), which name the path; any
other exception keeps its traceback (exit 1), because it is a bug.

Commands check their arguments and output folders with :func:`check_out_dir`,
:func:`check_choice` and :func:`check_formats` before a model is loaded, so a typo or an
unwritable ``--out`` fails in a second, not after a sweep.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from interp.errors import ConfigError, InterpError, StoreError, nearest

__all__ = ["run", "error_line", "check_out_dir", "check_choice", "check_positive", "check_formats", "FIGURE_FORMATS",
           "DEVICE_HELP", "DTYPE_HELP", "DEVICE_MAP_HELP", "model_options"]

#: OSErrors that are the environment's answer, not a bug: reported in one line, exit 2.
EXPECTED_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted", errno.ENOTDIR: "a parent is a file, not a folder",
                   errno.EISDIR: "is a folder, not a file", errno.ENAMETOOLONG: "file name too long",
                   errno.EFBIG: "file too large"}

FIGURE_FORMATS = ("png", "svg", "pdf", "html")

# Output folders checked in this invocation, by argument name: named when an OSError
# without a file name (a write that ran out of space) reaches the boundary.
_OUT_DIRS: dict[str, Path] = {}


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(e: BaseException) -> OSError | None:
    """``e`` as an OSError: itself, or the errno inside a Rust I/O error that safetensors raises
    as ``SafetensorError("... No space left on device (os error 28)")`` (not an OSError)."""
    if isinstance(e, OSError) and not isinstance(e, InterpError):
        return e
    if type(e).__name__ == "SafetensorError":
        m = _RUST_OS_ERROR.search(str(e))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
    return None


def error_line(e: BaseException) -> str:
    """``interp: error: <message>`` on one line (detail lines of the message joined with ``; ``)."""
    os_error = as_os_error(e)
    if os_error is not None:
        return "interp: error: " + _os_message(os_error)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    text = lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
    return f"interp: error: {text}"


def _os_message(e: OSError) -> str:
    what = EXPECTED_ERRNOS.get(e.errno or 0) or e.strerror or str(e)
    if e.filename:
        return f"{e.filename}: {what}" + (f" (and {e.filename2})" if e.filename2 else "")
    if _OUT_DIRS:
        where = ", ".join(f"{arg} {path}" for arg, path in _OUT_DIRS.items())
        return f"writing under {where}: {what}"
    return f"{what} ({e.strerror or e})"


def is_expected(e: BaseException) -> bool:
    """An InterpError, or an OSError whose errno says the file system refused (full, read-only, ...)."""
    if isinstance(e, InterpError):
        return True
    os_error = as_os_error(e)
    return os_error is not None and os_error.errno in EXPECTED_ERRNOS


def run(app, argv: Sequence[str] | None = None) -> int:
    """Run the click/typer ``app`` inside the error boundary and return the exit code."""
    _OUT_DIRS.clear()
    try:
        app(args=list(argv) if argv is not None else None, prog_name="interp", standalone_mode=True)
    except SystemExit as e:  # click's normal end (0), usage errors (2), typer.Exit(n)
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as e:  # noqa: BLE001 - the boundary: expected failures become one line
        if not is_expected(e):
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


def check_out_dir(path: str | Path, arg_name: str = "--out") -> Path:
    """Probe that the output folder ``path`` can be created and written, before any model work.

    The folder (and missing parents) is created, a probe file written and removed, and
    the folders this check created are removed again: a command that fails later leaves
    nothing behind; the command creates the folder when it writes its results.

    Args:
        path: the folder (created with its parents when missing).
        arg_name: the argument it came from, named in errors (``"--out"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        StoreError: the path or one of its parents is a file, or the folder cannot be
            created or written (read-only, permission denied, full); the message names
            ``arg_name``, the path and the reason.
    """
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is" if p == path else f"is under {p}, which is"
                raise StoreError(f"{arg_name} {path}: {what} a file, not a folder")
            break
    created = [p for p in [path, *path.parents] if not (p.exists() or p.is_symlink())]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".interp-write-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            try:
                os.unlink(probe)
            except FileNotFoundError:
                pass
    except OSError as e:
        why = EXPECTED_ERRNOS.get(e.errno or 0) or e.strerror or str(e)
        raise StoreError(f"{arg_name} {path}: cannot write there ({why})") from e
    finally:
        for p in created:            # deepest first; only folders this check made, only if still empty
            try:
                p.rmdir()
            except OSError:
                break
    _OUT_DIRS[arg_name] = path
    return path


def check_positive(value: int, arg_name: str) -> int:
    """``value`` if it is an integer >= 1, else a ConfigError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{arg_name}: expected an integer >= 1, got {value!r}")
    return value


def check_choice(value: str, choices: Iterable[str], arg_name: str) -> str:
    """``value`` if it is one of ``choices``, else a ConfigError naming the argument and the nearest choices."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{arg_name}: expected one of {', '.join(choices)}, got {value!r}.{nearest(value, choices)}")
    return value


def check_formats(text: str | Iterable[str], arg_name: str, allowed: Iterable[str] = FIGURE_FORMATS,
                  *, none_ok: bool = True) -> tuple[str, ...]:
    """Parse comma-separated figure formats (``"pdf,svg"``); ``"none"`` gives ``()`` where allowed."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if none_ok and items == ["none"]:
        return ()
    names = list(allowed) + (["none"] if none_ok else [])
    if not items:
        raise ConfigError(f"{arg_name}: no format given; expected some of {', '.join(names)}")
    for f in items:
        check_choice(f, names if len(items) == 1 else list(allowed), arg_name)
    return tuple(items)


# --------------------------------------------------------------------------- devices and precision

DEVICE_HELP = "torch device: cpu, cuda, cuda:N, mps (default: CUDA when present, else CPU)"
DTYPE_HELP = "model dtype: float32 (default), bfloat16, float16, float64"
DEVICE_MAP_HELP = ("instead of --device, the bridge's multi-device loading: auto, balanced, balanced_low_0, "
                   "sequential (CUDA), or JSON module -> device, e.g. '{\"\": \"cpu\"}'")


def model_options(device: str | None, dtype: str | None, *, device_arg: str = "--device",
                  dtype_arg: str = "--dtype", device_map: str | None = None,
                  device_map_arg: str = "--device-map") -> dict[str, object]:
    """Check ``--device`` / ``--dtype`` before any model work; returns ``load_model`` keyword arguments.

    Raises:
        ConfigError: a device absent here (the devices present named), an unknown dtype (the supported
            ones named), or a dtype whose basic operations fail on that device.
    """
    from interp.devices import check_dtype, device_map_devices, resolve_device, resolve_device_map, resolve_dtype

    if device_map:
        dmap = resolve_device_map(device_map, device=device or None, arg=device_map_arg, device_arg=device_arg)
        dt = resolve_dtype(dtype or None, arg=dtype_arg)
        for d in device_map_devices(dmap):
            check_dtype(dt, d, arg=dtype_arg)
        return {"device_map": dmap, "dtype": dt}
    dev = resolve_device(device or None, arg=device_arg)
    dt = resolve_dtype(dtype or None, arg=dtype_arg)
    check_dtype(dt, dev, arg=dtype_arg)
    return {"device": str(dev), "dtype": dt}


def prompt_texts(prompts: str | Path | None, task: str, n: int) -> list[str] | None:
    """``--prompts FILE`` (read and checked now, first ``n``) or None after checking ``--task`` by name.

    Called before the model loads; :func:`task_texts` builds the task's prompts once it has.
    """
    if prompts is not None:
        from interp.datasets import load_prompts

        return list(load_prompts(prompts))[:n]
    from interp.datasets.registry import check_task

    check_task(task, "--task")
    return None


def task_texts(texts: list[str] | None, task: str, model: object, n: int, seed: int) -> list[str]:
    """``texts`` from :func:`prompt_texts`, or the clean prompts of ``task`` built for the loaded ``model``."""
    if texts is not None:
        return texts
    from interp.datasets.registry import build_task

    return list(build_task(task, model=model, n=n, seed=seed).clean)


def parse_layers(text: str | None, n_layers: int, arg_name: str = "--layers") -> list[int]:
    """``"3,5"`` -> ``[3, 5]`` checked against the model's layers; empty = every layer."""
    if not text:
        return list(range(n_layers))
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"{arg_name}: expected comma-separated layer numbers, got {text!r}") from e
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ConfigError(f"{arg_name} {bad} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return layers
