"""``interp models``: what can be loaded here and now."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(prepare: bool = typer.Option(False, "--prepare", help="convert the bundled models now (once)")) -> None:
        """List loadable models: bundled, toy, local folders, hub (when reachable).

        Example: interp models --prepare
        """
        from interp.bundled import BUNDLED, bundled_folder
        from interp.models import available_models

        if prepare:
            for spec in BUNDLED:
                typer.echo(f"bundled {spec} ready at {bundled_folder(spec)}")
        for row in available_models():
            mark = "yes" if row["available"] else "no "
            typer.echo(f"{mark}  {row['spec']:<12} {row['kind']:<13} {row['detail']}")
