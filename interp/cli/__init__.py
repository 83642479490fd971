"""The ``interp`` command line.

Each sub-command lives in its own module under ``interp.cli`` with a
``register(app)`` function; this module only assembles them. Command modules import
heavy libraries inside the command functions, so ``interp --help`` is fast.
"""

from __future__ import annotations

import importlib

import typer

EPILOG = """\b
Examples:
  interp models                                         # what can be loaded here
  interp cache smollm2 --prompts data/prompts/prose.txt --sites resid_post,pattern --out out/cache
  interp run analyses/ioi_circuit.toml                  # the main job (README)
  interp --threads 4 run analyses/ioi_circuit.toml      # torch CPU threads for this run

Errors: bad input, arguments or output folders print one line "interp: error: ..." and
exit 2, before any model is loaded where possible; a traceback (exit 1) means a bug.
"""

app = typer.Typer(help="interp: a mechanistic-interpretability workbench.", epilog=EPILOG,
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  pretty_exceptions_enable=False)

@app.callback()
def _root(threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads for this run (0: torch's "
                                      "default)")) -> None:
    """interp: a mechanistic-interpretability workbench (see the examples below)."""
    if threads:
        import torch  # the entry point, not the library, sets process-wide thread counts

        torch.set_num_threads(threads)


# One module per command family; each defines register(app).
COMMAND_MODULES = ["models", "cache", "sinks", "sae", "run", "steering", "gate", "trace", "patch", "sad", "diagnostics",
                   "circuit", "vlm", "transcoders", "attribute"]
_registered: list[str] = []


def _register_all() -> None:
    for name in COMMAND_MODULES:
        if name not in _registered:
            importlib.import_module(f"interp.cli.{name}").register(app)
            _registered.append(name)


def invoke(argv: list[str] | None = None) -> int:
    """Run ``interp ARGV`` in this process and return its exit code (the one error boundary).

    (Not named ``run``: the ``interp.cli.run`` command module would shadow it.)

    Expected failures (:class:`~interp.errors.InterpError`, a full or read-only disk)
    print one line ``interp: error: ...`` and give 2; bugs keep their traceback.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     code = invoke(["models"])
        >>> code, "toy:llama" in out.getvalue()
        (0, True)
        >>> invoke(["run", "missing.toml"])   # one line "interp: error: ..." on stderr
        2
    """
    from interp.cli._common import run as boundary

    _register_all()
    return boundary(app, argv)


def main() -> None:
    """Entry point of the ``interp`` script."""
    import sys

    sys.exit(invoke())
