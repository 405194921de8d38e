# Two entry points for a fresh machine (README): `make run` and `make test`.
# Each creates its own virtual environment and installs what it needs.
PYTHON ?= python3
VENV_RUN  := .venv-run
VENV_TEST := .venv
# torch is installed first, pinned to the CPU wheel, so that the `torch` range in the
# extras is already satisfied and pip does not fetch a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0

.PHONY: run test lint typecheck pytest clean system-deps demo-bundle bench bench-gpu

$(VENV_TEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TEST)
	$(VENV_TEST)/bin/pip install -q --upgrade pip
	$(VENV_TEST)/bin/pip install -q $(TORCH_CPU)
	$(VENV_TEST)/bin/pip install -q -e '.[train,export,dev]'
	# pytorchvideo is a reference the tests compare our SlowFast against (never imported by
	# avaserve). --no-deps: its torchvision requirement cannot be met beside the CPU torch;
	# the tests stand in for the one torchvision op it uses.
	$(VENV_TEST)/bin/pip install -q --no-deps pytorchvideo==0.1.5
	$(VENV_TEST)/bin/pip install -q fvcore iopath parameterized
	# slowfast (PySlowFast 1.0) is a reference: its ActivityNet AVA evaluation engine
	# (tests/training/test_evaluation_official.py) and its model builder, config and Caffe2
	# name converter (tests/models/test_pyslowfast_reference.py).
	# --no-deps: its detectron2 requirement cannot be met on PyPI; only its pure-python
	# modules are used.
	$(VENV_TEST)/bin/pip install -q --no-deps slowfast==1.0 && $(VENV_TEST)/bin/pip install -q yacs simplejson termcolor
	# MMAction2 is a second reference (tests/models/test_upstream.py). --no-deps for the four
	# OpenMMLab packages: their requirements pull opencv-python/-contrib, decord and mmcv's
	# compiled build; the tests stand in for mmcv.ops. Then what their imports need.
	$(VENV_TEST)/bin/pip install -q --no-deps mmaction2==1.2.0 mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0
	$(VENV_TEST)/bin/pip install -q addict yapf einops importlib_metadata==8.5.0 \
		opencv-python-headless pycocotools shapely six terminaltables
	touch $@

$(VENV_RUN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_RUN)
	$(VENV_RUN)/bin/pip install -q --upgrade pip
	$(VENV_RUN)/bin/pip install -q -e .
	touch $@

# The service on embedded defaults: in-process feature bank and job store, the committed
# demo bundle, loopback only (no API key configured). Prints the web page's URL.
run: $(VENV_RUN)/.installed
	$(VENV_RUN)/bin/avaserve serve --bundle bundles/demo

# Rebuild the demo bundle from scratch on a CPU: world -> detector -> stage 1 -> bank ->
# stage 2 -> evaluation -> export (docs/demo-bundle.md says how the committed one was made).
DEMO_RUN ?= runs/demo
demo-bundle: $(VENV_TEST)/.installed
	$(VENV_TEST)/bin/avaserve demo-recipe $(DEMO_RUN)
	$(VENV_TEST)/bin/avaserve export --checkpoint $(DEMO_RUN)/stage2/final.pt \
		--detector onnx:$(DEMO_RUN)/detector/detector.onnx \
		--data $(DEMO_RUN)/world --out bundles/demo --force

# Issue 18's benches on the demo bundle and an untrained R50 bundle (built once into the
# git-ignored runs/bench): JSON under bench/results/ and a summary table; ~12 min on 2 cores.
# BENCH_ARGS=--quick for a short run.
bench: $(VENV_TEST)/.installed
	$(VENV_TEST)/bin/python bench/run_all.py $(BENCH_ARGS)

# GPU readiness (TensorRT fp16 engines, parity vs ORT CPU, live and concurrent streams);
# needs an NVIDIA GPU with TensorRT, fails with a clear message without one.
bench-gpu: $(VENV_TEST)/.installed
	bash bench/gpu_check.sh

lint: $(VENV_TEST)/.installed
	$(VENV_TEST)/bin/ruff check .
	$(VENV_TEST)/bin/ruff format --check .

typecheck: $(VENV_TEST)/.installed
	$(VENV_TEST)/bin/mypy

# System tools the tests drive for real (promtool, chromium, redis-server); idempotent.
system-deps:
	bash scripts/install-test-deps.sh

pytest: $(VENV_TEST)/.installed system-deps
	$(VENV_TEST)/bin/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV_TEST) $(VENV_RUN) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
