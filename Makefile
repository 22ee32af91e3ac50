# Two commands on a fresh machine: `make synth` and `make test`. Each installs what it needs.
VENV := .venv
PY := $(VENV)/bin/python
ENV ?= dev
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: synth test e2e bench clean

$(VENV)/.synth: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
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
