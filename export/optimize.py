"""`avaserve bundle optimize`: an existing float32 bundle with its graphs' slow 3-D convs
rewritten as exact 2-D ones (`export.frame_convs`), for bundles exported before export did it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from export import frame_convs
from export.quantize import calibration_feeds
from export.writing import ExportError, derive_bundle

__all__ = ["optimize_bundle"]


def optimize_bundle(
    src: Path,
    dst: Path,
    *,
    video: Path | None = None,
    data_dir: Path | None = None,
    kinds: Iterable[str] = frame_convs.DEFAULT_KINDS,
    force: bool = False,
) -> Any:
    """A copy of the bundle ``src`` at ``dst`` with its graphs' 3-D convs rewritten
    (`avaserve bundle optimize`; for bundles exported before export did it). Each rewritten
    graph passes the parity gate against its original on clips of ``video`` or of
    ``data_dir``'s val video. Returns the new manifest."""
    from core.manifest import BundleManifest, describe_graph, load_manifest

    manifest = load_manifest(src)
    if manifest.quantization is not None:
        raise ExportError(
            f"{src}: an int8 bundle; optimize its float32 original and quantise that "
            "(`avaserve bundle quantize` applies the rewrites too)"
        )

    def change(work: Path) -> Any:
        _, samples, _ = calibration_feeds(manifest, video=video, data_dir=data_dir, count=3)
        raw = manifest.model_dump()
        for role, graph in manifest.graphs.items():
            path = work / graph.file
            done = frame_convs.rewrite_checked(path, samples, graph=role, kinds=kinds)
            if done.count:
                raw["graphs"][role] = {
                    **graph.model_dump(),
                    "sha256": describe_graph(path, opset=graph.opset).sha256,
                    "rewrites": done.added_to(graph.rewrites),
                }
        return BundleManifest.model_validate(raw)

    return derive_bundle(Path(src), Path(dst), force, change)
