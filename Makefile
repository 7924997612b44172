# diffusion-lab: the two commands of the README, plus helpers for chapter authors.
#
#   make book        build the website (warnings are errors); prints where index.html is
#   make test        every test: library, notebooks (nbval, strict, baseline CPU kernels), site build, browser
#   make notebooks   re-run chapters in place to refresh their stored outputs
#                    (all of book/*.ipynb, or: make notebooks NB=book/02_information_theory.ipynb)
#
# Both main commands create the virtual environment .venv if it is missing and install
# requirements.txt (pinned) plus this package in editable mode. They need Python 3.11.5 or
# newer (PYTHON=python3.12 make test to pick another interpreter). Without a GPU:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make test
# installs the CPU build of the pinned torch from that index (unset: from PyPI, as pinned).

SHELL := /bin/bash
PYTHON ?= python3
PYTHON_MIN := 3.11.5
TORCH_INDEX_URL ?=
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BROWSER_DIR := tests/browser
# The browser test's browser (tests/test_browser.py reads CHROMIUM from the environment too).
CHROMIUM ?= /usr/bin/chromium
NODE_MODULES := $(BROWSER_DIR)/node_modules/.package-lock.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
comma := ,
NB ?= book/*.ipynb
PYTEST := $(PY) -m pytest -p no:cacheprovider

# The notebook tests run on baseline CPU kernels, unlike scripts/run_notebook.py, which
# stores the outputs with the machine's best ones: an output whose digits depend on the
# instruction set then fails here, not on a reader's machine. Each variable below changed
# results bitwise on this project's AVX-512 machine (CONTRIBUTING.md, "Outputs that do not
# depend on the CPU"); the MKL, oneDNN and OpenBLAS ones are x86-only.
NB_CPU_ENV := ATEN_CPU_CAPABILITY=default
ifeq ($(shell uname -m),x86_64)
NB_CPU_ENV += MKL_ENABLE_INSTRUCTIONS=SSE4_2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41 OPENBLAS_CORETYPE=Prescott
endif

.PHONY: book test notebooks system-deps python-version clean help

help:
	@sed -n '2,12p' Makefile

# One line, before anything is installed: the pins need Python 3.11 (numpy 2.4.6, scipy
# 1.17.1, ipython 9.18.1 and others), soupsieve 4.1.2 even 3.11.5 (their Requires-Python).
# Checks .venv's interpreter once it exists, else $(PYTHON).
python-version:
	@py="$(if $(wildcard $(PY)),$(PY),$(PYTHON))"; \
	found=$$($$py -c 'import platform; print("Python", platform.python_version())' 2>/dev/null) || found="no Python"; \
	if ! $$py -c 'import sys; sys.exit(sys.version_info < ($(subst .,$(comma) ,$(PYTHON_MIN))))' 2>/dev/null; then \
	  echo "error: diffusion-lab needs Python $(PYTHON_MIN) or newer, found $$found at '$$py' (pick one with PYTHON=python3.11 make ...$(if $(wildcard $(PY)), after rm -rf $(VENV)))" >&2; \
	  exit 1; \
	fi

$(PY): | python-version
	$(PYTHON) -m venv $(VENV)

# Re-installs when requirements.txt or pyproject.toml change. With TORCH_INDEX_URL set,
# the pinned torch comes from that index first (e.g. the CPU build), and then satisfies the pin.
$(INSTALLED): requirements.txt pyproject.toml | python-version $(PY)
	$(if $(TORCH_INDEX_URL),$(PY) -m pip install --index-url $(TORCH_INDEX_URL) "$$(grep -E '^torch==' requirements.txt)")
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e .
	touch $@

book: python-version $(INSTALLED)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo
	@echo "The website: $(CURDIR)/_build/html/index.html"

# Debian's chromium for the browser test (Playwright never downloads a browser here),
# and a CJK font so that the screenshots show the Chinese terms; each only if missing.
system-deps:
	@missing=""; \
	[ -x "$(CHROMIUM)" ] || missing="$$missing chromium"; \
	[ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || missing="$$missing fonts-wqy-zenhei"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi

# MathJax, require.js and the widget manager, pinned by the committed package-lock.json;
# the browser test serves them in place of the CDNs (the test machine is offline).
$(NODE_MODULES): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund

# Three pytest runs, in this order, and the target fails if any failed: the library and
# template tests (native kernels); the notebooks, once, on baseline kernels; then the site
# build and the browser test, which show the outputs nbval has just validated.
# The library tests and the notebooks run on TEST_JOBS pytest-xdist workers (default: the
# machine's cores, at most 4); the notebooks one per worker at a time (--dist loadscope keeps a
# notebook's cells on its kernel); each chapter's kernel uses one thread (torch.set_num_threads(1)
# in its setup cell). TEST_JOBS=0 runs everything in one process.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: python-version $(INSTALLED) system-deps $(NODE_MODULES)
	@status=0; \
	$(PYTEST) -n $(TEST_JOBS) tests --ignore=tests/test_site_build.py --ignore=tests/test_browser.py || status=1; \
	env $(NB_CPU_ENV) $(PYTEST) --nbval -n $(TEST_JOBS) --dist loadscope book || status=1; \
	$(PYTEST) tests/test_site_build.py tests/test_browser.py || status=1; \
	exit $$status

notebooks: $(INSTALLED)
	$(PY) scripts/run_notebook.py $(NB)

clean:
	rm -rf _build $(BROWSER_DIR)/screenshots .pytest_cache

# Mutation testing (too slow for `make test`; run it before resolving a library issue; see
# CONTRIBUTING.md, "Mutation testing"). Add a module to MUTANT_MODULES when it lands. The tests
# of a module are tests/test_lib_<module>.py and tests/test_<first word of module>*.py (flow:
# test_flow*.py; consistency_training: test_consistency*.py), those of the continuous-time
# modules (MUTANT_CT_MODULES) tests/test_ct_*.py; plus MUTANT_EXTRA_TESTS for every module (the
# oracle sampler tests, the referee's formula checks, and the simulated-device tests, which kill
# device-only mutants).
#   make mutants                              every core module
#   make mutants MUTANT_MODULES="ddpm ddim"   some of them
#   make -s mutant-tests MUTANT_MODULES=pc    print the test files a run would select
MUTANT_CT_MODULES = paths predictions ode sde likelihood dpm_solver edm discrete pc grids objectives
MUTANT_MODULES ?= gaussians schedules forward ddpm ddim score guidance elbo $(MUTANT_CT_MODULES) flow \
	path_change distill consistency consistency_training categorical masked
MUTANT_EXTRA_TESTS ?= tests/test_lib_samplers.py tests/test_lib_referee.py tests/test_device_discipline.py
mutant_tests = $(if $(filter $(1),$(MUTANT_CT_MODULES)),$(wildcard tests/test_ct_*.py),$(wildcard tests/test_lib_$(1).py tests/test_$(firstword $(subst _, ,$(1)))*.py))
MUTANT_TESTS = $(sort $(foreach m,$(MUTANT_MODULES),$(call mutant_tests,$(m)))) $(MUTANT_EXTRA_TESTS)
MUTANT_JOBS ?= 2
DEV_INSTALLED := $(VENV)/.installed-dev

$(DEV_INSTALLED): requirements-dev.txt $(INSTALLED)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

.PHONY: mutants mutant-tests
mutant-tests:
	@echo $(MUTANT_TESTS)

mutants: $(DEV_INSTALLED)
	env -u PYTHONPATH $(PY) scripts/run_mutants.py --modules "$(MUTANT_MODULES)" --tests "$(MUTANT_TESTS)" --max-children $(MUTANT_JOBS)
	env -u PYTHONPATH $(VENV)/bin/mutmut results
