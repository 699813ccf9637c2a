# openfuyao.pd — the two entry points are `make run` (the embedded default: a real
# 1P1D vLLM on this machine) and `make test` (every test suite). Everything else is a
# building block of those two.
SHELL := /bin/bash
PY ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
COLL_LINK := $(CURDIR)/.ansible/collections/ansible_collections/openfuyao/pd
INVENTORY ?= inventories/local/cluster.ini
PYTEST_ARGS ?=
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)

.PHONY: setup system-deps run test lint sanity unit integration e2e molecule clean docs

$(BIN)/.stamp: requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(COLL_LINK):
	mkdir -p $(dir $(COLL_LINK))
	ln -sfn $(CURDIR) $(COLL_LINK)

setup: $(BIN)/.stamp $(COLL_LINK)

# Debian packages the tests need on the machine running them (docker engine for molecule,
# supervisor as the process supervisor where systemd does not run, Mooncake's runtime libs).
system-deps:
	bash tests/tools/system-deps.sh

run: setup
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/site.yml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --profile production

# docs/plan.md's variables tables, from the planner's variable table (pd_plan_vars.VAR_SPECS);
# tests/unit/test_plan_vars_doc.py fails when the two disagree.
docs: setup
	$(BIN)/python tests/tools/vars_doc.py

sanity: setup
	bash tests/tools/sanity.sh

unit: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: setup system-deps
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

molecule: setup system-deps
	$(BIN)/pytest tests/molecule $(PYTEST_ARGS)

# One pytest run over every suite, so the closing summary line counts them all.
test: setup system-deps lint sanity
	$(BIN)/pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .ansible .pytest_cache .ruff_cache tests/output
