# Two commands on a fresh machine: `make synth` and `make test`. Each installs what it needs.
VENV := .venv
PY := $(VENV)/bin/python
ENV ?= dev
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

# The venv uses the Python minor version of the functions' Lambda runtime (stacks/bundling.py), so the
# tests run on the Python that runs the code: python3.13 on PATH, else pyenv's 3.13.x, else python3 with a warning.
LAMBDA_PYTHON := $(shell sed -n 's/^LAMBDA_PYTHON_VERSION = "\(.*\)"/\1/p' stacks/bundling.py)
PYENV_ROOT ?= $(HOME)/.pyenv
FOUND_PYTHON := $(firstword $(wildcard $(PYENV_ROOT)/versions/$(LAMBDA_PYTHON).*/bin/python$(LAMBDA_PYTHON)) \
                $(shell command -v python$(LAMBDA_PYTHON) 2>/dev/null))
BASE_PYTHON := $(or $(FOUND_PYTHON),python3)
VENV_STAMP := $(VENV)/.python-$(LAMBDA_PYTHON)$(if $(FOUND_PYTHON),,-fallback)

# Every package comes from a hash-locked file (`make lock` writes them from the *.in files) and pip checks each
# file it installs against the lock (--require-hashes); the operator command is then installed editable on top,
# with no dependency and no build download (its build backend, setuptools, is in the lock).
PIP_LOCKED := $(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps
PIP_PROJECT := $(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

# The functions' locks are for Lambda's platform (stacks/bundling.py: LAMBDA_PYTHON_VERSION, LAMBDA_PLATFORM).
LAMBDA_LOCK := --python-version $(LAMBDA_PYTHON) --python-platform aarch64-manylinux2014
# The venv's locks hold every platform's wheels (markers where they differ), from the oldest Python it may use.
VENV_LOCK := --universal --python-version 3.11
# `make lock` keeps the locked versions the *.in files still allow; `make lock UPGRADE=1` takes the newest.
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes $(if $(UPGRADE),--upgrade)

.PHONY: synth test e2e bench clean lock

$(VENV_STAMP):
	@[ -n "$(FOUND_PYTHON)" ] || echo "warning: Python $(LAMBDA_PYTHON) (the functions' Lambda runtime) not found; the venv uses $$(python3 --version) instead"
	rm -rf $(VENV) && $(BASE_PYTHON) -m venv $(VENV) && touch $@

$(VENV)/.synth: requirements.txt pyproject.toml $(VENV_STAMP)
	$(PIP_LOCKED) -r requirements.txt
	$(PIP_PROJECT)
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt pyproject.toml $(VENV_STAMP)
	$(PIP_LOCKED) -r requirements-dev.txt
	$(PIP_PROJECT)
	touch $@ $(VENV)/.synth

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

## Synthesize environment $(ENV) (default dev) into cdk.out, with cdk-nag and CloudFormation validation.
synth: $(VENV)/.synth node_modules/.installed
	npx --no-install cdk synth -c env=$(ENV) --quiet
	@echo "templates in cdk.out/: $$(ls cdk.out/*.template.json)"

## Every test: handlers against MariaDB/moto, the stack, snapshots, cdk-nag, cfn-lint, CLI synth, end to end.
test: $(VENV)/.dev node_modules/.installed
	$(PY) -m pytest

## The whole pipeline locally against your MySQL (MYSQL_DSN), printing where each file went.
e2e: $(VENV)/.dev node_modules/.installed
	$(VENV)/bin/pipeline-ops local

## Export benchmark: the fetch floor, the export (uploading to a local S3), rustpy-xlsxwriter and XlsxWriter
## at 50k, 200k and 1M rows, each in its own process (~10 min); `make bench ROWS=50000,200000` for a subset.
ROWS ?= 50000,200000,1000000
bench: $(VENV)/.dev
	$(PY) bench/export_bench.py --rows $(ROWS)

## Compile the hash locks: requirements.txt and requirements-dev.txt for this venv, lambdas/*/requirements.txt
## for Lambda's platform, each from its requirements.in. Commit the *.in and *.txt files together.
lock: $(VENV)/.dev
	$(UV_COMPILE) $(VENV_LOCK) requirements.in -o requirements.txt
	$(UV_COMPILE) $(VENV_LOCK) requirements-dev.in -o requirements-dev.txt
	for fn in lambdas/*/requirements.in; do $(UV_COMPILE) $(LAMBDA_LOCK) $$fn -o $${fn%.in}.txt || exit 1; done

clean:
	rm -rf cdk.out $(VENV) node_modules
