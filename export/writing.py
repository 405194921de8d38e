"""Writing a bundle directory: the one export error, the work-directory dance and the
versions the manifest records.

A bundle is written into a temporary directory beside ``out`` and renamed into place only when
it is complete and validated (`move_into_place`), so a failed export never leaves a bundle
behind nor replaces a good one. `export.bundle` and `export.quantize` both write this way.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ExportError", "derive_bundle", "move_into_place", "prepare_out", "versions"]


class ExportError(RuntimeError):
    """The export cannot go on; the message names what is wrong and what to do."""


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for mod, key in (("torch", "torch_version"), ("onnx", "onnx_version")):
        try:
            out[key] = str(__import__(mod).__version__)
        except ImportError:
            out[key] = None
    import onnxruntime

    out["onnxruntime_version"] = str(onnxruntime.__version__)
    return out


def prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"--out {out} exists and is not empty; pass --force to replace it")


def move_into_place(work: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def derive_bundle(src: Path, dst: Path, force: bool, change: Callable[[Path], Any]) -> Any:
    """A changed copy of the bundle ``src`` at ``dst``: its files are copied into a work
    directory beside ``dst``, ``change(work)`` edits them and returns the new manifest, which
    is written and validated before the directory moves into place. Returns the manifest;
    on any error nothing is left at ``dst`` (nor a work directory)."""
    from core.manifest import validate_bundle, write_manifest

    prepare_out(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        for f in Path(src).iterdir():
            if f.is_file():
                shutil.copyfile(f, work / f.name)
        new = change(work)
        write_manifest(work, new)
        validate_bundle(work)
        move_into_place(work, dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return new
