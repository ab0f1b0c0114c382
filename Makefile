# sciplat developer and operator entry points. `make help` lists them.
VENV       ?= .venv
PYTHON     ?= python3
INV        ?= inventories/local
SCIPLAT    := $(VENV)/bin/sciplat
PYTEST     := $(VENV)/bin/pytest
STAMP      := $(VENV)/.installed
RECREATE   := $(if $(filter 1,$(SCIPLAT_TESTBED_RECREATE)),--recreate,)

.PHONY: help up down deps venv test test-unit test-integration lint docs status clean

help:
	@echo "make up          system packages, venv, test bed, deploy; prints the URL"
	@echo "make test        every test tier (unit, then integration + e2e on the test bed)"
	@echo "make test-unit   the fast tier alone (seconds, no hosts)"
	@echo "make lint        ruff, mypy, yamllint, ansible-lint"
	@echo "make status      health of the test bed platform"
	@echo "make down        remove the test bed's hosts (caches and image stay)"
	@echo "make docs        build the documentation site into site/"

deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,cloud,e2e]'
	@touch $@

venv: $(STAMP)

up: deps venv
	$(SCIPLAT) testbed up -i $(INV) $(RECREATE)
	$(SCIPLAT) up -i $(INV)
	@echo
	@echo "The platform answers at https://127.0.0.1:8443 (certificate: $(INV)/pki/ca.crt)."
	@echo "  curl --cacert $(INV)/pki/ca.crt https://127.0.0.1:8443/healthz"
	@echo "Sign in: open https://127.0.0.1:8443, choose 'Sign up' and register user 'admin' (the platform's"
	@echo "  admin, identity.admin_users), then approve it:  $(SCIPLAT) users approve admin -i $(INV)"
	@echo "  and sign in. Other users sign up the same way; the admin approves them in the hub or with that command."
	@echo "Hosts: ssh -F $(INV)/.sciplat/ssh_config gw   (also data, c1, c2)"

down: venv
	$(SCIPLAT) testbed down -i $(INV)

status: venv
	$(SCIPLAT) status -i $(INV)

test: test-unit test-integration

test-unit: venv
	$(PYTEST) tests/unit

# One deploy per run; every integration and e2e test then runs against it
# (destructive ones last, see tests/integration/conftest.py).
test-integration: deps venv
	$(SCIPLAT) testbed up -i $(INV) $(RECREATE)
	$(SCIPLAT) up -i $(INV)
	SCIPLAT_DEPLOYED=1 $(PYTEST) tests/integration tests/e2e

lint: venv
	$(VENV)/bin/ruff check src tests stacks
	$(VENV)/bin/ruff format --check src tests stacks
	$(VENV)/bin/mypy
	$(VENV)/bin/yamllint -s .
	ANSIBLE_CONFIG=ansible.cfg $(VENV)/bin/ansible-lint --profile production playbooks roles

docs: venv
	$(SCIPLAT) schema --markdown -o docs/reference/spec.md
	$(SCIPLAT) schema -o docs/reference/platform.schema.json
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf site .pytest_cache .mypy_cache .ruff_cache
