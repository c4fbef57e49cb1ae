# TCMS: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TCMS_TEST_PG_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: setup demo demo-inprocess mail-packages test-packages postgres-ready test test-fast \
        soak lint typecheck clean

# Debian packages, as command:package (a path for a file that must exist): the mail stack
# of the demo and the end-to-end tests (tests/mailstack.py), then what the tests add:
# openssl and curl (RFC 3161 and TLS interoperability), dieharder (TSRG batteries)
MAIL_TOOLS := postfix:postfix dovecot:dovecot-imapd /usr/lib/dovecot/lmtp:dovecot-lmtpd \
              swaks:swaks openssl:openssl
TEST_TOOLS := $(MAIL_TOOLS) curl:curl dieharder:dieharder
# install the packages of $(1) that are missing (root, as on a fresh Debian machine)
define install_missing
	@need=""; for pair in $(1); do cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  case $$cmd in /*) [ -e "$$cmd" ] || need="$$need $$pkg";; \
	                *) command -v "$$cmd" >/dev/null || need="$$need $$pkg";; esac; done; \
	if [ -n "$$need" ]; then echo "installing Debian packages:$$need"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; fi
endef

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install TCMS with its test tools

demo: $(STAMP) mail-packages  ## two organisations, real Postfix + Dovecot, one certified mail, step by step
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python demo/two_orgs.py --out demo-out

demo-inprocess: $(STAMP)  ## five exchanges between in-process parties (no mail servers), every recovery path
	$(BIN)/tcms demo --out demo-out

mail-packages:  ## Debian's Postfix, Dovecot (IMAP, LMTP), swaks and openssl, if missing
	$(call install_missing,$(MAIL_TOOLS))

test-packages:  ## the mail packages, curl and dieharder, if missing (root)
	$(call install_missing,$(TEST_TOOLS))

postgres-ready: $(STAMP)  ## the PostgreSQL server of the tests answers (TCMS_TEST_PG_URL)
	@$(BIN)/python -c 'import asyncio, asyncpg, os; \
	asyncio.run(asyncpg.connect(os.environ["TCMS_TEST_PG_URL"], timeout=10))' 2>/dev/null || { \
	  echo "No PostgreSQL answers at $$TCMS_TEST_PG_URL: the tests need one (trust auth," \
	       "database test). Debian: apt-get install postgresql, then start it" \
	       "(pg_ctlcluster ... main start) or set TCMS_TEST_PG_URL."; exit 1; }

# `make test` runs the tests in TEST_WORKERS processes (pytest-xdist: the end-to-end tests mostly
# wait for protocol deadlines, so three share two cores well); the tests of a module
# that share a mail stack or running services stay on one (tests/conftest.py groups them)
TEST_WORKERS ?= 3
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: $(STAMP) test-packages postgres-ready  ## lint, type-check, every test (about 8 min on 2 cores)
	$(BIN)/ruff check .
	$(BIN)/mypy
	TCMS_PROPERTY_EXAMPLES=200 TCMS_RACES=100 $(BIN)/pytest -q $(PARALLEL) --durations=15

test-fast: $(STAMP) postgres-ready  ## the tests not marked slow (no two-gateway exchanges, no batteries)
	TCMS_PROPERTY_EXAMPLES=200 TCMS_RACES=100 $(BIN)/pytest -q $(PARALLEL) -m "not slow"

soak: $(STAMP) test-packages postgres-ready  ## the deep runs, with figures (about an hour)
	TCMS_PROPERTY_EXAMPLES=3000 TCMS_RACES=1000 $(BIN)/pytest -q -s \
	  --hypothesis-show-statistics --durations=0 tests/test_property.py \
	  tests/test_services.py::test_abort_resolve_races_across_two_ttp_processes
	$(BIN)/python bench/tsrg_quality.py
	$(BIN)/python bench/fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis
