"""The `avaserve` command line.

Each top-level package contributes its commands through a `register(app)` function in
its own CLI module. Those modules import nothing heavy at import time (no torch, no
PyAV), so `avaserve --help` is instant and works on a service-only install.
"""

from __future__ import annotations

import importlib

import typer

from avaserve import __version__

# Modules that contribute commands, in help order. A module whose optional dependencies
# are missing still registers its commands; the command itself explains what to install.
COMMAND_MODULES: tuple[str, ...] = (
    "training.world_cli",
    "training.eval_cli",
    "training.balance_cli",
    "training.train_cli",
    "training.detector.cli",
    "export.cli",
    "export.import_cli",
    "service.annotate_cli",
    "service.serve_cli",
)

app = typer.Typer(
    name="avaserve",
    help=(
        "Watch video and say, every second, where each person is and what they are doing "
        "(the 80 AVA atomic actions).\n\n"
        "Offline: make-world, train, eval, export. Online: annotate, serve."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"avaserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """avaserve command line."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not written yet, or not installed
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
