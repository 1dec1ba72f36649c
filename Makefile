# The README's two commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# pip on this kind of machine prints a warning per package for a local index it skips.
QUIET_PIP := 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0

.PHONY: install demo test test-all bench-quick lint clean

install: $(VENV)/.installed

# torch is installed FIRST from requirements/cpu.txt (a pinned CPU build), so that resolving
# the package never pulls a multi-GB CUDA build. GPU users: see README "Install".
$(VENV)/.installed: pyproject.toml requirements/cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/cpu.txt $(QUIET_PIP)
	$(PY) -m pip install -q -c requirements/cpu.txt -e '.[offline,tune,test]' $(QUIET_PIP)
	touch $@

demo: install
	$(VENV)/bin/raymeta train --config configs/starter.yaml

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

test-all: install  # also the slow and GPU tests
	$(PY) -m pytest -q -m ""

bench-quick: install  # meta-step time breakdown and ratios, tiny model (under 3 minutes on 2 CPUs)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/raymeta bench --quick

lint: install
	$(VENV)/bin/ruff check raymeta tests jobs benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
