# isol8r: `make demo` sets up and shows a jail; `make test` sets up and runs the tests (as root);
# `make unit` runs the fast subset that needs no root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install link isolate-link deps test unit demo strace rootfs bench clean

all: install

$(STAMP): pyproject.toml bin/isol8r
	$(PYTHON) -m venv $(VENV)
	@# the mcp extra: `isol8r mcp` and its test (tests/test_mcp.py) use the MCP SDK
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,mcp]'
	@# setuptools is for builds (pip brings its own, isolated); its .pth costs every start ~1 ms
	$(BIN)/pip uninstall -q -y setuptools
	touch $(STAMP)

# bytecode for every module, also one added since the venv was made, so a CLI start does not
# compile (PYTHONDONTWRITEBYTECODE may be set); compileall skips what is up to date
install: $(STAMP)
	@$(BIN)/python -m compileall -q src >/dev/null
	@echo "isol8r is $(CURDIR)/$(BIN)/isol8r; to put it on PATH: make link (PREFIX=$(PREFIX))"

# a symlink, so the command keeps using this checkout's venv
PREFIX ?= /usr/local
link: install
	mkdir -p $(PREFIX)/bin
	ln -sfn $(CURDIR)/$(BIN)/isol8r $(PREFIX)/bin/isol8r

# on request only: an `isolate` command for judges written for IOI's isolate (docs/judges.md);
# it will not replace an isolate that is not isol8r's
isolate-link: install
	mkdir -p $(PREFIX)/bin
	@if [ -e $(PREFIX)/bin/isolate ] && ! grep -qs isol8r $(PREFIX)/bin/isolate; then \
	  echo "$(PREFIX)/bin/isolate exists and is not isol8r's: not replaced" >&2; exit 1; fi
	printf '#!/bin/sh\n# isol8r isolate: isolate'"'"'s command line over isol8r\nexec %s isolate "$$@"\n' \
	  '$(CURDIR)/$(BIN)/isol8r' > $(PREFIX)/bin/isolate
	chmod 755 $(PREFIX)/bin/isolate

deps:
	@scripts/install-deps.sh

test: install deps
	$(BIN)/python -m pytest -q

# the root-free subset: plans, shapes, protocols and the house rules, in seconds, as any user
unit: install
	$(BIN)/python -m pytest -q tests/unit

demo: install deps
	$(BIN)/python scripts/demo.py

strace: install deps
	mkdir -p build
	strace -f -tt -o build/strace.log $(BIN)/isol8r run -- /bin/sh -c 'id; hostname'
	@echo "the jail's system calls, every process: build/strace.log ($$(wc -l < build/strace.log) lines)"

rootfs: install deps
	$(BIN)/isol8r mkroot build/rootfs

bench: install deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/listen.py
	$(BIN)/python bench/interactive.py
	$(BIN)/python bench/environments.py
	$(BIN)/python bench/judge.py
	$(BIN)/python bench/net.py
	$(BIN)/python bench/sandbox.py

clean:
	rm -rf $(VENV) build src/*.egg-info
