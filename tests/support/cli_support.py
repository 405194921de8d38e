"""A Typer app holding only the commands one ``register`` function adds, for CLI tests that
drive a command group through ``typer.testing.CliRunner`` without the whole ``avaserve`` app."""

from __future__ import annotations

from collections.abc import Callable

import typer


def command_app(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """An app with the commands ``register`` adds. The root callback keeps them subcommands
    (``app eval ...``) even when ``register`` adds a single one."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app with only the registered commands."""

    register(app)
    return app
