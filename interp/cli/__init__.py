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
"""

app = typer.Typer(help="interp: a mechanistic-interpretability workbench.", epilog=EPILOG,
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  pretty_exceptions_enable=False)

@app.callback()
def _root() -> None:
    """interp: a mechanistic-interpretability workbench (see the examples below)."""


# One module per command family; each defines register(app).
COMMAND_MODULES = ["models", "cache", "sinks", "sae", "run", "steering", "gate", "trace", "patch"]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"interp.cli.{name}").register(app)


def main() -> None:
    """Entry point of the ``interp`` script: clean one-line errors for InterpError."""
    import sys

    from interp.errors import InterpError

    _register_all()
    try:
        app()  # standalone: click prints usage errors and exits itself
    except InterpError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
