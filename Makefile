# diffusion-lab: the two commands of the README, plus helpers for chapter authors.
#
#   make book        build the website (warnings are errors); prints where index.html is
#   make test        every test: library, notebooks (nbval, strict), site build, browser
#   make notebooks   re-run chapters in place to refresh their stored outputs
#                    (all of book/*.ipynb, or: make notebooks NB=book/02_information_theory.ipynb)
#
# Both main commands create the virtual environment .venv if it is missing and install
# requirements.txt (pinned) plus this package in editable mode.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BROWSER_DIR := tests/browser
NODE_MODULES := $(BROWSER_DIR)/node_modules/.package-lock.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NB ?= book/*.ipynb

.PHONY: book test notebooks system-deps clean help

help:
	@sed -n '2,7p' Makefile

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs when requirements.txt or pyproject.toml change.
$(INSTALLED): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e .
	touch $@

book: $(INSTALLED)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo
	@echo "The website: $(CURDIR)/_build/html/index.html"

# Debian's chromium for the browser test (Playwright never downloads a browser here),
# and a CJK font so that the screenshots show the Chinese terms; each only if missing.
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || missing="$$missing fonts-wqy-zenhei"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi

# MathJax, require.js and the widget manager, pinned by the committed package-lock.json;
# the browser test serves them in place of the CDNs (the test machine is offline).
$(NODE_MODULES): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund

test: $(INSTALLED) system-deps $(NODE_MODULES)
	$(PY) -m pytest --nbval tests book

notebooks: $(INSTALLED)
	$(PY) scripts/run_notebook.py $(NB)

clean:
	rm -rf _build $(BROWSER_DIR)/screenshots .pytest_cache

# Mutation testing (too slow for `make test`; run it before resolving a library issue; see
# CONTRIBUTING.md, "Mutation testing"). Add a module to MUTANT_MODULES when it lands; its tests
# are tests/test_lib_<module>.py, plus the oracle sampler tests in MUTANT_EXTRA_TESTS.
#   make mutants                              every core module
#   make mutants MUTANT_MODULES="ddpm ddim"   some of them
MUTANT_MODULES ?= gaussians schedules forward ddpm ddim score guidance elbo
MUTANT_EXTRA_TESTS ?= tests/test_lib_samplers.py
MUTANT_TESTS = $(foreach m,$(MUTANT_MODULES),tests/test_lib_$(m).py) $(MUTANT_EXTRA_TESTS)
MUTANT_JOBS ?= 2
DEV_INSTALLED := $(VENV)/.installed-dev

$(DEV_INSTALLED): requirements-dev.txt $(INSTALLED)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

.PHONY: mutants
mutants: $(DEV_INSTALLED)
	env -u PYTHONPATH $(PY) scripts/run_mutants.py --modules "$(MUTANT_MODULES)" --tests "$(MUTANT_TESTS)" --max-children $(MUTANT_JOBS)
	env -u PYTHONPATH $(VENV)/bin/mutmut results
