"""``avaserve export`` and ``avaserve bundle validate|info``.

Nothing heavy is imported at module level (only typer). ``bundle validate`` and ``bundle
info`` need only ``core.manifest`` and ONNX Runtime, so they run on a service install
without PyTorch; ``export`` imports torch inside its body.

Exit codes: 0 ok; 1 the export failed (parity gate, bad checkpoint, ...) or the bundle is
invalid; 2 bad usage, or a requested tool (TensorRT) is not available here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import typer

from core.defaults import DEFAULT_SCORE_THRESHOLD

__all__ = ["bundle_app", "export_command", "register"]

bundle_app = typer.Typer(
    name="bundle",
    help="Check and describe model bundles (no PyTorch needed).",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    """Add ``export`` and the ``bundle`` sub-commands to the ``avaserve`` app."""
    app.command("export", help=export_command.__doc__)(export_command)
    app.add_typer(bundle_app, name="bundle")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def export_command(
    out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Training checkpoint (.pt) to export."
    ),
    bank_checkpoint: Path | None = typer.Option(
        None,
        "--bank-checkpoint",
        help="Stage-1 checkpoint whose person features fill the bank (report A): exported as "
        "bank_backbone.onnx.",
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Model preset, with --random-init (development bundles)."
    ),
    random_init: bool = typer.Option(
        False,
        "--random-init",
        help="Export an UNTRAINED randomly initialised --preset (labelled so in the manifest).",
    ),
    lfb: bool = typer.Option(True, "--lfb/--no-lfb", help="With --random-init: feature bank."),
    use_global: bool = typer.Option(
        True, "--global/--no-global", help="With --random-init: global scene branch."
    ),
    seed: int = typer.Option(0, "--seed", help="With --random-init: torch seed."),
    detector: str | None = typer.Option(
        None,
        "--detector",
        help="yolox:PATH (YOLOX ONNX; decode + NMS appended) or onnx:PATH (a graph with the "
        "detector contract and a PATH.json DetectorSpec beside it).",
    ),
    score_threshold: float = typer.Option(
        DEFAULT_SCORE_THRESHOLD,
        "--score-threshold",
        help="Detector person score threshold (the default is report A's).",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="AVA-format dataset dir: parity on a val video with GT boxes."
    ),
    parity_video: Path | None = typer.Option(
        None, "--parity-video", help="Video for the parity gate (fixed boxes)."
    ),
    parity_keyframes: int = typer.Option(3, "--parity-keyframes", min=1, help="Clips to check."),
    parity_atol: float = typer.Option(
        1e-4, "--parity-atol", help="Max abs difference ONNX Runtime vs PyTorch (fp32)."
    ),
    parity_rtol: float = typer.Option(
        0.0,
        "--parity-rtol",
        help="Also allow rtol * max|reference| per output (off by default; for large "
        "backbones whose activations reach ~100, where 1e-4 absolute is float32 noise).",
    ),
    slim: bool = typer.Option(True, "--slim/--no-slim", help="Simplify graphs with onnxslim."),
    conv_rewrites: str = typer.Option(
        "thin",
        "--conv-rewrites",
        help="3-D convs to rewrite as exact 2-D ones, which ONNX Runtime's CPU kernels run "
        "faster (export/frame_convs.py): 'thin' (few input channels: the stems; the default), "
        "'thin,frame' (also every 1 x k x k conv; slower on the measured CPU) or 'none'.",
    ),
    tensorrt: str | None = typer.Option(
        None, "--tensorrt", help="fp16 or int8: also build TensorRT engines (needs TensorRT)."
    ),
    triton: Path | None = typer.Option(
        None, "--triton", help="Also write a Triton model repository here."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: quantise the backbone (static, calibrated on the parity source's clips; "
        "export/quantize.py). Its drift from float32 is gated and stored in the manifest.",
    ),
    calibration_keyframes: int = typer.Option(
        8, "--calibration-keyframes", min=1, help="With --quantize: clips to calibrate on."
    ),
    min_cosine: float = typer.Option(
        0.98,
        "--quantize-min-cosine",
        help="With --quantize: the drift gate; each person/clip feature's cosine similarity to "
        "float32 must reach this.",
    ),
) -> None:
    """Export a checkpoint (+ detector) to a model bundle; refuses when parity fails."""
    if (checkpoint is None) == (preset is None):
        _fail("give exactly one of --checkpoint CKPT or --preset NAME --random-init", 2)
    if preset is not None and not random_init:
        _fail(
            f"--preset {preset} exports an untrained model: add --random-init to confirm, or "
            f"pass --checkpoint",
            2,
        )
    if bank_checkpoint is not None and checkpoint is None:
        _fail("--bank-checkpoint needs --checkpoint", 2)
    if tensorrt not in (None, "fp16", "int8"):
        _fail(f"--tensorrt {tensorrt!r}: choose fp16 or int8", 2)
    rewrite_kinds = _rewrite_kinds(conv_rewrites)
    if quantize not in (None, "int8"):
        _fail(f"--quantize {quantize!r}: the one mode is int8", 2)
    if quantize is not None and tensorrt is not None:
        _fail(
            "--quantize int8 writes ONNX Runtime CPU int8 operators (QLinearConv), which "
            "TensorRT does not build; for a GPU use --tensorrt int8 on a float32 export",
            2,
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from core.manifest import BundleError
    from export.bundle import (
        ExportError,
        build_bundle,
        load_checkpoint_models,
        parse_detector,
        random_init_model,
    )
    from export.parity import ParityError
    from export.quantize import QuantizationError, QuantizeOptions
    from export.tensorrt import TensorRTBuildError, TensorRTUnavailable
    from export.triton import TritonError

    try:
        if tensorrt is not None:
            from export.tensorrt import require_tensorrt

            require_tensorrt()
        det = parse_detector(detector) if detector is not None else None
        if checkpoint is not None:
            loaded = load_checkpoint_models(checkpoint, bank_checkpoint=bank_checkpoint)
        else:
            assert preset is not None
            loaded = random_init_model(preset, seed=seed, use_lfb=lfb, use_global=use_global)
            typer.echo(f"warning: {loaded.provenance}", err=True)
        result = build_bundle(
            loaded,
            out,
            detector=det,
            parity_video=parity_video,
            data_dir=data,
            parity_keyframes=parity_keyframes,
            opset=opset,
            atol=parity_atol,
            rtol=parity_rtol,
            slim=slim,
            score_threshold=score_threshold,
            tensorrt=tensorrt,  # type: ignore[arg-type]
            triton_dir=triton,
            force=force,
            quantize=quantize,  # type: ignore[arg-type]
            calibration_keyframes=calibration_keyframes,
            quantize_options=QuantizeOptions(min_cosine=min_cosine),
            conv_rewrites=rewrite_kinds,
        )
    except TensorRTUnavailable as e:
        _fail(str(e).splitlines()[0], 2)
    except (
        ExportError,
        ParityError,
        BundleError,
        TensorRTBuildError,
        TritonError,
        QuantizationError,
    ) as e:
        _fail(str(e))
    m = result.manifest
    typer.echo(f"parity clips: {result.parity_source}")
    for role, rec in m.parity.items():
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in rec.max_abs_diff.items())
        typer.echo(f"parity {role}: {diffs} (tolerance {rec.tolerance:g}, {rec.samples} samples)")
    _echo_rewrites(m)
    _echo_quantization(m)
    size = sum(f.stat().st_size for f in result.path.iterdir() if f.is_file())
    typer.echo(
        f"wrote {result.path} ({', '.join(g.file for g in m.graphs.values())}, manifest.json; "
        f"{size / 1e6:.1f} MB); validated ({len(result.checks)} checks)"
    )
    if triton is not None:
        typer.echo(f"wrote Triton repository {triton}")


def _rewrite_kinds(text: str) -> frozenset[str]:
    """``--conv-rewrites`` as a set of kinds; exit 2 naming the choices when it is not one."""
    from export.frame_convs import parse_kinds

    try:
        return parse_kinds(text)
    except ValueError as e:
        _fail(f"--conv-rewrites: {e}", 2)


def _echo_rewrites(m: object) -> None:
    for role, graph in getattr(m, "graphs", {}).items():
        if graph.rewrites:
            kinds = ", ".join(f"{n} {k}" for k, n in graph.rewrites.items())
            typer.echo(
                f"{role}: 3-D convs rewritten as 2-D for ONNX Runtime's CPU kernels: {kinds}"
            )


def _echo_quantization(m: object) -> None:
    q = getattr(m, "quantization", None)
    if q is None:
        return
    for role, outs in q.drift.items():
        diffs = ", ".join(
            f"{k} max abs {d.max_abs:.3g} cosine {d.min_cosine:.5f}" for k, d in outs.items()
        )
        typer.echo(
            f"int8 {role} vs float32: {diffs} (gate: cosine >= {q.min_cosine:g}; "
            f"{q.calibration_clips} calibration clips, {q.format}, "
            f"{'per-channel' if q.per_channel else 'per-tensor'})"
        )


@bundle_app.command("quantize")
def quantize_command(
    bundle: Path = typer.Argument(..., help="A float32 bundle directory."),
    out: Path = typer.Option(..., "--out", help="The int8 bundle directory to write."),
    data: Path | None = typer.Option(
        None, "--data", help="AVA-format dataset: calibrate on its val video, GT boxes."
    ),
    video: Path | None = typer.Option(
        None, "--video", help="Calibrate on this video (fixed boxes)."
    ),
    calibration_keyframes: int = typer.Option(8, "--calibration-keyframes", min=1),
    min_cosine: float = typer.Option(0.98, "--quantize-min-cosine"),
    conv_rewrites: str = typer.Option(
        "thin",
        "--conv-rewrites",
        help="As for export, applied to the float32 graph first where it lacks them: 'thin', "
        "'thin,frame' or 'none'.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
) -> None:
    """int8 copy of an exported bundle (the backbone quantised, as export --quantize int8)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from core.manifest import BundleError
    from export.bundle import ExportError
    from export.quantize import QuantizationError, QuantizeOptions, quantize_bundle

    kinds = _rewrite_kinds(conv_rewrites)

    try:
        m = quantize_bundle(
            bundle,
            out,
            video=video,
            data_dir=data,
            calibration_keyframes=calibration_keyframes,
            options=QuantizeOptions(min_cosine=min_cosine),
            force=force,
            conv_rewrites=kinds,
        )
    except (ExportError, BundleError, QuantizationError) as e:
        _fail(str(e))
    _echo_quantization(m)
    typer.echo(f"wrote {out}")


@bundle_app.command("optimize")
def optimize_command(
    bundle: Path = typer.Argument(..., help="A float32 bundle directory."),
    out: Path = typer.Option(..., "--out", help="The bundle directory to write."),
    data: Path | None = typer.Option(
        None, "--data", help="AVA-format dataset: check parity on its val video, GT boxes."
    ),
    video: Path | None = typer.Option(
        None, "--video", help="Check parity on this video (fixed boxes)."
    ),
    conv_rewrites: str = typer.Option(
        "thin", "--conv-rewrites", help="As for export: 'thin', 'thin,frame' or 'none'."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
) -> None:
    """Copy of a bundle whose slow 3-D convs are rewritten as exact 2-D ones (what export now
    does; for bundles exported before). Each rewritten graph passes the parity gate."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from core.manifest import BundleError
    from export.bundle import ExportError
    from export.optimize import optimize_bundle
    from export.parity import ParityError

    kinds = _rewrite_kinds(conv_rewrites)
    try:
        m = optimize_bundle(bundle, out, video=video, data_dir=data, kinds=kinds, force=force)
    except (ExportError, BundleError, ParityError) as e:
        _fail(str(e))
    _echo_rewrites(m)
    typer.echo(f"wrote {out}")


@bundle_app.command("validate")
def validate_command(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    no_load: bool = typer.Option(
        False, "--no-load", help="Only the manifest and hashes; do not load graphs."
    ),
) -> None:
    """Check a bundle: manifest, sha256 of every file, graph I/O names/shapes in ONNX Runtime."""
    from core.manifest import BundleError, validate_bundle

    try:
        checks = validate_bundle(bundle, load_graphs=not no_load)
    except BundleError as e:
        typer.echo(f"FAIL {e}", err=True)
        field = f" field={e.field}" if e.field else ""
        typer.echo(f"invalid bundle {bundle}: file={e.file}{field}", err=True)
        raise typer.Exit(1) from None
    for c in checks:
        typer.echo(f"ok   {c.file:<20} {c.check:<12} {c.detail}")
    typer.echo(f"bundle {bundle} is valid ({len(checks)} checks)")


@bundle_app.command("info")
def info_command(bundle: Path = typer.Argument(..., help="Bundle directory.")) -> None:
    """Summarise a bundle: model, preprocessing, detector, bank, graphs, parity, provenance."""
    from core.manifest import BundleError, load_manifest
    from export.bundle import describe_bundle

    try:
        summary = describe_bundle(load_manifest(bundle))
    except BundleError as e:
        _fail(str(e))
    for key, value in summary.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for k, v in value.items():
                typer.echo(f"  {k:<14} {v}")
        else:
            typer.echo(f"{key:<18} {value}")
