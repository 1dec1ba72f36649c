# The README's two commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# pip on this kind of machine prints a warning per package for a local index it skips.
QUIET_PIP := 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0

.PHONY: install demo test test-slow test-all speed-quick bench-quick lint clean wheelhouse install-offline gpu-check gpu-bundle gpu-bundle-check

install: $(VENV)/.installed

# torch is installed FIRST from requirements/cpu.txt (a pinned CPU build), so that resolving
# the package never pulls a multi-GB CUDA build. GPU users: see README "Install".
# pip byte-compiles at install time, on purpose: where PYTHONDONTWRITEBYTECODE is set (CI here), Python never
# writes .pyc files itself, and every process (each Ray worker) would compile torch and transformers from source
# on import. `pip install --no-compile` made `make test` twice as slow here for that reason. An editable install
# is not compiled by pip, so raymeta is compiled here too (0.15 s less per process that imports it: every task actor).
$(VENV)/.installed: pyproject.toml requirements/cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/cpu.txt $(QUIET_PIP)
	$(PY) -m pip install -q -c requirements/cpu.txt -e '.[offline,tune,test,setfit,fastfit,tensorboard,onnx]' $(QUIET_PIP)
	$(PY) -m compileall -q raymeta
	touch $@

demo: install
	$(VENV)/bin/raymeta train --config starter --overwrite  # a second `make demo` starts the run over

# The default suite (markers gpu and slow off: pyproject.toml's addopts); the 25 slowest tests are listed at
# the end so that a test that grows slow shows. Two xdist workers (15.7 min serially, once): a file's tests stay
# in one worker, which shares one Ray instance, its module's actors and one CLI fork server. Both CPUs are busy
# (96% over a run), so a third worker would only share them.
test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=25

test-slow: install  # only the slow-marked tests (a Tune PBT search, every ready-made task end to end)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m slow --durations=25

test-all: install  # also the slow and GPU tests
	$(PY) -m pytest -q -m ""

speed-quick: install  # meta-step time breakdown and ratios, tiny model (under 3 minutes on 2 CPUs)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/raymeta speed --quick

bench-quick: speed-quick  # the old name, kept for one release (the command was `raymeta bench`)

# GPU (README "GPU"). `make wheelhouse` on a connected machine: the wheels raymeta needs beyond a stock CUDA
# PyTorch image, for the node's Python and platform (numpy and pyarrow ship manylinux_2_28 wheels only).
# `make install-offline` on the air-gapped node, with its own Python (whose CUDA torch stays), then `make gpu-check`.
PY_VERSION ?= 312
PLATFORM ?= manylinux_2_28_x86_64 manylinux2014_x86_64
WHEELHOUSE ?= wheelhouse
NODE_PY ?= $(shell test -x $(PY) && echo $(PY) || echo python3)

wheelhouse:
	$(NODE_PY) benchmarks/wheelhouse.py --dest $(WHEELHOUSE) --python-version $(PY_VERSION) --platform $(PLATFORM)

install-offline:
	$(NODE_PY) -m pip install --no-index --find-links $(WHEELHOUSE) 'raymeta[offline,test]'

gpu-check:  # under 8 minutes on one GPU; `$(NODE_PY) benchmarks/gpu_check.py --cpu-smoke --out DIR` without one
	$(NODE_PY) benchmarks/gpu_check.py --out runs/gpu_check

# The air-gapped node in one carried folder (README "GPU"; benchmarks/results/gpu.md): `make gpu-bundle` here writes
# .gpu/ (≤ 40 MiB: what the node's image lacks, Ray slimmed), then `bash .gpu/run.sh` on the node writes to $$OUT.
# `make gpu-bundle-check` plays the node: a cached Python 3.12 venv of the image's packages only
# (benchmarks/gpu_node_image.txt), network off, runs .gpu/run.sh --cpu-smoke from a copy of the bundle alone.
GPU_WHEELS ?= $(HOME)/.cache/raymeta-gpu-wheels
gpu-bundle: install
	$(PY) benchmarks/gpu_bundle.py build --dest .gpu --wheels-cache $(GPU_WHEELS)

gpu-bundle-check: gpu-bundle
	$(PY) benchmarks/gpu_bundle.py check --bundle .gpu

lint: install
	$(VENV)/bin/ruff check raymeta tests jobs benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
