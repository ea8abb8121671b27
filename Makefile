# The README's two commands: `make demo` and `make test`. Both set up .venv idempotently.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_LENSES ?= behavior

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that lies on disk, unless a torch (e.g. a CUDA build) is installed
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/audit organisms build --out organisms --seed 0
	$(VENV)/bin/audit organisms audit organisms --out demo_out --lenses $(DEMO_LENSES)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check audit probes reports tests cli.py

clean:
	rm -rf organisms demo_out audit_out
