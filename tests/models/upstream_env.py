"""Importing the upstream projects on a CPU-only test install, for comparison tests.

The upstream packages are installed at test time (Makefile), never copied here. Their
compiled ops are absent on this install (torchvision beside the CPU torch pin; mmcv-lite
instead of mmcv), so this module stands in for them:

* ``torchvision.ops.RoIAlign`` and ``mmcv.ops.RoIAlign``: `roi_reference`'s independent
  RoIAlign (not ``models/roi.py``);
* every other name imported from ``mmcv.ops`` (mmdet imports NMS, deformable convs, ...
  at import time): a placeholder that raises if it is ever called; the SlowFast AVA models
  never call one.

`mmaction_importable` also supplies the one module mmaction2 1.2.0's wheel lacks
(``mmaction.models.localizers.drn``, a packaging slip; DRN is a temporal-grounding model
the tests never build).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from roi_reference import MmcvRoIAlign, TorchvisionRoIAlign


class _MissingOp:
    """A compiled op the comparison never runs."""

    _name = "op"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{self._name}: a compiled op, absent from this install")


class _OpsModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (_MissingOp,), {"_name": f"{self.__name__}.{name}"})
        setattr(self, name, placeholder)
        return placeholder


class _OpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``mmcv.ops`` and its submodules as `_OpsModule`s."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _OpsModule(spec.name)
        module.__path__ = []  # a package, so that submodules import
        if spec.name == "mmcv.ops":
            module.RoIAlign = MmcvRoIAlign  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def stub_module(monkeypatch: pytest.MonkeyPatch, dotted: str, **attrs: Any) -> None:
    """Put a package ``a`` whose submodule ``a.b`` (``dotted``) holds only ``attrs`` in
    ``sys.modules`` for this test, standing in for a library that is not installed."""
    package_name, child = dotted.split(".")
    package, module = types.ModuleType(package_name), types.ModuleType(dotted)
    for name, value in attrs.items():
        setattr(module, name, value)
    setattr(package, child, module)
    monkeypatch.setitem(sys.modules, package_name, package)
    monkeypatch.setitem(sys.modules, dotted, module)


def _purge(prefixes: Sequence[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        monkeypatch.delitem(sys.modules, name)


@contextmanager
def torchvision_stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pytorchvideo importable, its torchvision RoIAlign computed by `roi_reference`."""
    if importlib.util.find_spec("pytorchvideo") is None:
        pytest.skip("pytorchvideo not installed (the Makefile installs it)")
    stub_module(monkeypatch, "torchvision.ops", RoIAlign=TorchvisionRoIAlign)
    _purge(["pytorchvideo"], monkeypatch)  # re-import against the stand-in
    yield


_FINDER = _OpsFinder()


def mmaction_importable() -> None:
    """Make mmaction2 / mmdet importable with `mmcv.ops` stood in for (skips the test when
    they are not installed). Once per process: mmengine's registries refuse a second import
    of the same modules, so the stand-ins stay for the session (no other code imports
    ``mmcv.ops``)."""
    for name in ("mmaction", "mmengine", "mmcv", "mmdet"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} not installed (the Makefile installs mmaction2 and its stack)")
    if _FINDER in sys.meta_path:
        return
    if "mmcv.ops" in sys.modules:
        raise RuntimeError("mmcv.ops was imported before its stand-in")
    sys.meta_path.insert(0, _FINDER)
    for name in ("mmaction.models.localizers.drn", "mmaction.models.localizers.drn.drn"):
        stub = types.ModuleType(name)
        stub.DRN = type("DRN", (), {})  # type: ignore[attr-defined]
        sys.modules[name] = stub
