# The two commands a new user runs:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test install clean bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: any other spec pulls GBs of CUDA wheels on CPU machines.
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) jobs/pipeline.py --config configs/demo.yaml

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/shard.py

clean:
	rm -rf work
