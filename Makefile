# Two entry points, both working on a fresh machine:
#   make demo   venv + install, tiny models, a short search; prints the best merge
#   make test   venv + install, lint, the whole test suite
#   make smol   the real SmolLM2-135M family (cached in ~/.cache/llm-evo), then a search on it
# STRATEGY=cma|random|llm picks the demo's search strategy.

VENV ?= .venv
PY := $(VENV)/bin/python
STRATEGY ?= llm
STORAGE ?= runs/demo
# Test processes (pytest-xdist). On 2 cores the serial suite kept them 72% busy (its runs
# wait on Ray, process start-up and imports); two processes keep them ~97% busy, 12% sooner.
# A test file stays on one process (--dist loadfile): its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: install demo test lint models smol-family smol clean

# setup.py builds the kinship pass's optional C kernel: editing it reinstalls.
$(VENV)/.installed: pyproject.toml setup.py llm_evo/kinship/_gram.c llm_evo/kinship/_gram_small.h \
		scripts/install_llama_cpp.sh scripts/check_llama_build.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU torch wheel first: any other torch requirement would pull CUDA.
	$(PY) -m pip install -q torch==2.13.0
	# llama.cpp for the local LLM, built for any x86-64 CPU (never -march=native, never
	# from pip's wheel cache): see the script.
	scripts/install_llama_cpp.sh $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

models: install
	$(PY) scripts/make_tiny_family.py --out models/tiny

demo: models
	$(PY) scripts/demo.py --strategy $(STRATEGY) --storage-path $(STORAGE)

smol-family: install
	$(PY) scripts/make_smol_family.py --out models/smol

smol: smol-family
	$(VENV)/bin/llm-evo run configs/smol.yml --storage-path runs/smol --in-memory

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=40

clean:
	rm -rf runs models/tiny  # a link: the families stay in ~/.cache/llm-evo
