# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# node `jose` for the interop test and the quickstart, from the committed lock file
JOSE := tests/interop/node_modules/.package-lock.json

.PHONY: run test test-fast bench bench-scale lint clean screenshots

# `make run` is development: the public development key is allowed, and upstream and each service
# get a broker user of their own (created by `mfa broker setup` with rabbitmqctl) with these
# development passwords. Set any of them in the environment to override.
run: export MFA_ENV ?= development
run: export MFA_AMQP_USER_PREFIX ?= mfa-dev-
run: export MFA_AMQP_PASSWORD_UPSTREAM ?= dev-upstream
run: export MFA_AMQP_PASSWORD_AUTH ?= dev-auth
run: export MFA_AMQP_PASSWORD_NOTIFIER ?= dev-notifier
run: export MFA_AMQP_PASSWORD_RECOVERY ?= dev-recovery
run: export MFA_AMQP_PASSWORD_AUDIT ?= dev-audit

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(STAMP)

$(JOSE): tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund

run: $(STAMP)
	$(BIN)/mfa migrate
	$(BIN)/mfa broker setup
	@echo "Upstream publishes to RabbitMQ as $${MFA_AMQP_USER_PREFIX}upstream (password $$MFA_AMQP_PASSWORD_UPSTREAM)."
	@echo "Development API keys (shown once; create more with: $(BIN)/mfa api-key create --role ROLE):"
	@for role in service helpdesk auditor; do \
	  printf '  %-9s %s\n' "$$role" "$$($(BIN)/mfa api-key create --role $$role --label dev | tail -n 1)"; \
	done
	MFA_LOG_FORMAT=$${MFA_LOG_FORMAT:-console} $(BIN)/mfa start

test: $(DEV_STAMP) $(JOSE)
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: $(DEV_STAMP) $(JOSE)
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/events.py --batched
	$(BIN)/python bench/events.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/pages.py
	$(BIN)/python bench/mail.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/admin_pages.py
	$(BIN)/python bench/soak.py

# How cost grows with size (1M accounts, 10M audit rows, a 200,000-event backlog): half an hour, ~12 GB of disk.
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

# A PNG of every hosted page in English and Dutch (docs/screenshots/), from the page tests in Chromium.
screenshots: $(DEV_STAMP)
	MFA_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q -p no:cacheprovider tests/pages/test_every_page.py \
	  tests/pages/test_admin.py::test_every_admin_page \
	  tests/pages/test_helpdesk.py::test_every_console_page tests/pages/test_recover_form.py::test_every_form_page

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
