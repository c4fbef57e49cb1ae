# TCMS: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TCMS_TEST_PG_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: setup demo demo-inprocess mail-packages test test-fast lint typecheck bench clean

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

mail-packages:  ## Debian's Postfix, Dovecot (IMAP, LMTP, Sieve) and swaks, if missing (root)
	@command -v postfix >/dev/null && command -v dovecot >/dev/null && \
	  command -v sievec >/dev/null && [ -e /usr/lib/dovecot/lmtp ] || { \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    postfix dovecot-imapd dovecot-lmtpd dovecot-sieve swaks openssl; }

test: $(STAMP)  ## lint, type-check and run the whole test suite (needs PostgreSQL)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

test-fast: $(STAMP)  ## every test, with 200 instead of 3000 property-based schedules each
	TCMS_PROPERTY_EXAMPLES=200 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis
