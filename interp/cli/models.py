"""``interp models``: what can be loaded here and now."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(prepare: bool = typer.Option(False, "--prepare", help="convert the bundled models now (once)"),
               only: str = typer.Option("", "--only", help="with --prepare: these bundled models (comma list), "
                                        "e.g. smollm2")) -> None:
        """List loadable models: bundled, toy, local folders, hub (when reachable).

        Example: interp models --prepare
        """
        from interp.bundled import BUNDLED, bundled_folder
        from interp.models import available_models

        wanted = [x.strip() for x in only.split(",") if x.strip()] or list(BUNDLED)
        unknown = [x for x in wanted if x not in BUNDLED]
        if unknown:
            from interp.errors import ConfigError

            raise ConfigError(f"--only: unknown bundled model(s) {', '.join(unknown)}; known: {', '.join(BUNDLED)}")
        if prepare:
            for spec in wanted:
                typer.echo(f"bundled {spec} ready at {bundled_folder(spec)}")
        for row in available_models():
            mark = "yes" if row["available"] else "no "
            typer.echo(f"{mark}  {row['spec']:<12} {row['kind']:<13} {row['detail']}")
