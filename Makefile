# The two commands a new user runs:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo demo-speech demo-video test test-all install clean bench ui browser

$(VENV)/.installed: pyproject.toml
	@# The speech demo synthesizes its voices with espeak-ng, and the recognizer's tests speak with
	@# flite: system packages, installed here when missing and this is root (CI); otherwise said in one line.
	@{ command -v espeak-ng >/dev/null && command -v flite >/dev/null; } || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -qq espeak-ng flite >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng flite >/dev/null)); } || \
		echo "note: the speech demo and tests need espeak-ng and flite: sudo apt-get install espeak-ng flite"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: any other spec pulls GBs of CUDA wheels on CPU machines.
	$(PY) -m pip install "$(TORCH_SPEC)"
	# the base install serves images; the speech and video extras their demos and tests, s3 an
	# MLflow server's artifacts on S3, dev the tests (with an S3 server of their own)
	$(PY) -m pip install -e ".[speech,speech-eval,video,s3,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) jobs/pipeline.py --config configs/demo.yaml

demo-speech: install
	$(PY) jobs/pipeline.py --config configs/demo-speech.yaml

demo-video: install
	$(PY) jobs/pipeline.py --config configs/demo-video.yaml

# The GPU tests (tests/test_gpu.py) run with  pytest -m gpu  on a machine with one.
# Two test processes share the 2 cores (each test mostly waits on Ray and its jobs), each with a
# local Ray instance of its own (pipeline.runtime.start_local keeps their workers apart).
# The MLflow UI test (an e2e test: make test-all) drives Debian's Chromium and ChromeDriver (no
# browser download at run time): installed here when missing and this is root; otherwise that test
# fails and says how.
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -qq chromium chromium-driver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)); } || \
		echo "note: the MLflow UI test needs Chromium: sudo apt-get install chromium chromium-driver"

# make test: every test but the whole-scenario ones (marked e2e) and the GPU ones, ~6 minutes on
# 2 cores with the install (docs/operations.md, Tests); what CI runs (no test of it drives a
# browser, so it installs none).
# make test-all adds the e2e scenarios (each modality's pipeline job, the README's commands with
# the MLflow UI in a browser, a real Ray head and MLflow server, Tune searches, a Train worker
# killed, pipelines killed and run again): ~18 minutes on 2 cores, most of it Python processes
# starting (every Ray Train worker and job imports torch, Ray and MLflow).
test: install
	$(PY) -m pytest -n 2 --dist worksteal -m "not gpu and not e2e" --durations=20

test-all: install browser
	$(PY) -m pytest -n 2 --dist worksteal -m "not gpu" --durations=20

# The demo's MLflow store in the MLflow UI on http://127.0.0.1:5000 (UI_PORT=... to change it).
UI_PORT ?= 5000
ui: install
	$(PY) jobs/ui.py --config configs/demo.yaml --port $(UI_PORT)

bench: install
	$(PY) bench/shard.py

clean:
	rm -rf work
