"""`avaserve import-checkpoint`: a public SlowFast AVA checkpoint -> an avaserve checkpoint.

::

    avaserve import-checkpoint --format pyslowfast SLOWFAST_32x2_R50_SHORT.pyth \\
        --preset slowfast_r50_ava --out r50.ckpt [--report] [--set alpha=8]

Every source tensor must map to the preset and every preset tensor must be filled, with
equal shapes (``models.importers`` has the key tables); otherwise nothing is written, the
report names the keys, and the exit code is 2. The report is printed either way;
``--report`` adds the full source -> target table.

Nothing heavy is imported at module level (only typer), so ``avaserve --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

__all__ = ["import_checkpoint_command", "parse_overrides", "register"]

_FORMATS = ("pyslowfast", "pytorchvideo", "mmaction2")


def register(app: typer.Typer) -> None:
    """Add the ``import-checkpoint`` command to the ``avaserve`` app."""
    app.command("import-checkpoint", help=import_checkpoint_command.__doc__)(
        import_checkpoint_command
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["alpha=8", "class_ids=[1,2,3]"]`` -> ``{"alpha": 8, "class_ids": (1, 2, 3)}``.

    Values are JSON; a value that is not JSON is taken as a string. JSON lists become
    tuples (the presets take tuples, and tuples survive a ``weights_only`` load).
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[name.strip()] = _tuples(value)
    return out


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def import_checkpoint_command(
    file: Path = typer.Argument(..., help="The public checkpoint (.pyth, .pkl, .pth)."),
    source_format: str = typer.Option(
        ...,
        "--format",
        help="pyslowfast (.pyth model_state, or Caffe2 .pkl blobs), pytorchvideo "
        "(slowfast_r50_detection layout) or mmaction2 (SlowFast AVA state_dict).",
    ),
    preset: str = typer.Option(
        "slowfast_r50_ava", "--preset", help="avaserve preset to load into (models.presets)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write the avaserve checkpoint."),
    report: bool = typer.Option(
        False, "--report", help="Print the full source -> target key table."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="Preset override KEY=VALUE (JSON value), e.g. --set alpha=8 for a 4x16 model, "
        "--set num_frames=64 for PySlowFast's 64x2, --set nonlocal_instantiation=softmax; "
        "repeatable. Wins over the format's defaults and the checkpoint's config.",
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="Allow arbitrary Python objects in the file (only for files you trust).",
    ),
) -> None:
    """Import a PySlowFast / pytorchvideo / MMAction2 SlowFast AVA checkpoint, strictly."""
    if source_format not in _FORMATS:
        raise typer.BadParameter(
            f"{source_format!r} is not one of {', '.join(_FORMATS)}", param_hint="--format"
        )
    user_overrides = parse_overrides(overrides)

    from core.manifest import sha256_file
    from models.checkpoints import Checkpoint, save_checkpoint
    from models.importers import CheckpointImportError, import_checkpoint

    try:
        result = import_checkpoint(
            file,
            source_format,
            preset=preset,
            overrides=user_overrides,
            trust_pickle=trust_pickle,
        )
    except CheckpointImportError as exc:
        typer.echo(f"error: {exc}", err=True)
        if report and exc.report is not None:
            typer.echo(exc.report.summary(verbose=True), err=True)
        typer.echo("nothing written.", err=True)
        raise typer.Exit(code=2) from None

    typer.echo(result.report.summary(verbose=report))
    model = result.model
    save_checkpoint(
        out,
        Checkpoint(
            model=model.state_dict(),
            preset=preset,
            preset_overrides=result.preset_overrides,
            classes=list(model.class_ids),
            source={
                "format": result.report.source_format,
                "file": file.name,
                "sha256": sha256_file(file),
            },
        ),
    )
    typer.echo(f"wrote {out}")
