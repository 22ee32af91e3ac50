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

.PHONY: synth test e2e bench clean

$(VENV_STAMP):
	@[ -n "$(FOUND_PYTHON)" ] || echo "warning: Python $(LAMBDA_PYTHON) (the functions' Lambda runtime) not found; the venv uses $$(python3 --version) instead"
	rm -rf $(VENV) && $(BASE_PYTHON) -m venv $(VENV) && touch $@

$(VENV)/.synth: requirements.txt pyproject.toml | $(VENV_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt pyproject.toml | $(VENV_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
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

clean:
	rm -rf cdk.out $(VENV) node_modules
