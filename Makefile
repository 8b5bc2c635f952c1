# dmflow — `make demo` and `make test` do all set-up on a fresh machine.
SHELL := bash
.DEFAULT_GOAL := help

# The Temporal CLI (dev server) is pinned in tools/go.mod and built from the
# Go module proxy into the git-ignored .bin/, once.
TEMPORAL_CLI_VERSION := $(shell awk '$$1=="require" && $$2=="github.com/temporalio/cli" {print substr($$3,2)}' tools/go.mod)
BIN := .bin
CMDS := worker starter simdevice localhub
GO_SOURCES := $(shell find . -name '*.go' -not -path './tools/*' -not -path './.dmflow/*') go.mod go.sum

export DMFLOW_BIN_DIR := $(abspath $(BIN))
export DMFLOW_TEMPORAL_BIN := $(abspath $(BIN)/temporal)

.PHONY: help build temporal cluster-build demo up up-cluster down status test test-unit test-integration chaos fuzz record-histories lint clean bench bench-fleet bench-firmware bench-baseline bench-rollout bench-cluster bench-scale bench-report

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/temporal: tools/go.mod tools/go.sum
	@echo "building Temporal CLI $(TEMPORAL_CLI_VERSION) into $(BIN)/ (first time only, ~3 min)"
	cd tools && go build -ldflags "-X github.com/temporalio/cli/temporalcli.Version=$(TEMPORAL_CLI_VERSION)" \
		-o ../$(BIN)/temporal github.com/temporalio/cli/cmd/temporal

temporal: $(BIN)/temporal ## build the pinned Temporal CLI

# The production shape without Docker (make up-cluster): the Temporal server,
# its SQL schema tool and schema files, and the Web UI server, at the versions
# tools/cluster/go.mod pins (the ones deploy/cluster.env names), built once.
CLUSTER_MOD = cd tools/cluster && go list -m -f '{{.Dir}}'
$(BIN)/.cluster: tools/cluster/go.mod tools/cluster/go.sum
	@echo "building Temporal server, temporal-sql-tool and the Temporal UI server into $(BIN)/ (first time only, a few minutes)"
	cd tools/cluster && go build -o ../../$(BIN)/temporal-server go.temporal.io/server/cmd/server
	cd tools/cluster && go build -o ../../$(BIN)/temporal-sql-tool go.temporal.io/server/cmd/tools/sql
	cd tools/cluster && go build -o ../../$(BIN)/temporal-ui-server github.com/temporalio/ui-server/v2/cmd/server
	rm -rf $(BIN)/temporal-schema
	cp -R "$$($(CLUSTER_MOD) go.temporal.io/server)/schema" $(BIN)/temporal-schema
	chmod -R u+w $(BIN)/temporal-schema
	@touch $@

cluster-build: $(BIN)/.cluster ## build the Temporal server, its schema tool and the Web UI server of make up-cluster

$(BIN)/.cmds: $(GO_SOURCES)
	go build -o $(BIN)/ $(addprefix ./,$(CMDS))
	@touch $@

build: $(BIN)/temporal $(BIN)/.cmds ## build the Temporal CLI and dmflow's commands into .bin/

up: build ## start Temporal dev server, localhub and worker in the background
	scripts/stack.sh up

up-cluster: build cluster-build ## the production shape without Docker: PostgreSQL, Temporal server, Web UI (:8080), localhub, two workers
	scripts/stack.sh up-cluster

down: ## stop everything `make up`, `make up-cluster` or `make demo` started
	scripts/stack.sh down

status: ## show which stack processes run
	scripts/stack.sh status

demo: build ## reboot a simulated device, update its firmware, roll a version out to 100 simulated devices (DEMO_EXIT=1: exit after the demo)
	scripts/demo.sh

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	go vet ./...
	go vet -tags integration ./test/...
	go vet -tags 'integration bench' ./test/...

test-unit: ## unit and in-process localhub tests
	go test -count=1 ./...

test-integration: build cluster-build ## real processes: Temporal dev server, localhub, simdevice, worker (the chaos cases short); the up-cluster stack on PostgreSQL
	go test -tags integration -count=1 -timeout 30m -parallel 3 -v ./test/... 2>&1 | tee $(BIN)/integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; exit $${PIPESTATUS[0]}

chaos: build ## the chaos cases at full size, 500–1,000 devices each (~20 min): kills and restarts mid-rollout, a 429 storm, faulty devices
	ulimit -n "$$(ulimit -Hn)"; DMFLOW_CHAOS=long go test -tags integration -count=1 -timeout 90m -run 'TestChaos' -v ./test/ 2>&1 | tee $(BIN)/chaos.log | grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|chaos_test.go' ; exit $${PIPESTATUS[0]}

record-histories: build ## re-record workflows/testdata/*.json from the integration tests
	DMFLOW_RECORD_HISTORY=$(abspath workflows/testdata) go test -tags integration -count=1 -run 'TestRebootEndToEnd|TestFirmwareEndToEnd|TestRolloutEndToEnd|TestRolloutWindows|TestDeviceContracts|TestFleetVersions|TestRolloutRetriesByType|TestRolloutRollback|TestRolloutContinuous' ./test/...

# How long each fuzz target runs: 10 s for make fuzz, 3 s within make test, which must stay within
# CI's 25 minutes on two cores; FUZZTIME=1m make fuzz for a longer search.
FUZZTIME ?= 10s
fuzz: ## run every fuzz target for FUZZTIME (default 10s; 3s within make test) each
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

# The benchmarks' results: bench-<name>.md (tables) and bench-<name>.json (figures) in .bin/.
BENCH_OUT := $(abspath $(BIN))
# The file bench and bench-report write.
BENCH_REPORT ?= BENCHMARKS.md
BENCH_TEST := go test -tags 'integration bench' -count=1 -v ./test/
# BENCH_SHOW keeps a benchmark's progress lines on the terminal; the whole log goes to .bin/.
BENCH_SHOW := grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|measure[a-z_]*_test.go'

bench: build ## every benchmark in one run, then BENCHMARKS.md rewritten from it (about 1¼ h; settings in BENCHMARKS.md)
	rm -f $(BIN)/bench-*.md $(BIN)/bench-*.json $(BIN)/bench-started
	echo "$$(date -u +%Y-%m-%dT%H:%M:%SZ) $$(cat /proc/loadavg)" > $(BIN)/bench-started
	$(MAKE) --no-print-directory bench-firmware
	$(MAKE) --no-print-directory bench-fleet
	$(MAKE) --no-print-directory bench-baseline
	$(MAKE) --no-print-directory bench-rollout
	$(MAKE) --no-print-directory bench-cluster
	go run ./bench/report --dir $(BIN) --out $(BENCH_REPORT) --started $(BIN)/bench-started

bench-report: ## BENCHMARKS.md from the results in .bin/ of the bench-* targets run so far (BENCH_REPORT= to write elsewhere)
	go run ./bench/report --dir $(BIN) --out $(BENCH_REPORT)

bench-firmware: build ## one firmware update at the tutorial's 15 s stages: dmflow against the tutorial's loop (~1½ min)
	DMFLOW_BENCH_OUT=$(BENCH_OUT)/bench-firmware.md $(BENCH_TEST) -timeout 10m -run '^TestMeasureFirmwareCost$$' 2>&1 \
		| tee $(BIN)/bench-firmware.log | $(BENCH_SHOW) ; exit $${PIPESTATUS[0]}
	@cat $(BIN)/bench-firmware.md

bench-baseline: build ## the tutorials' sequential loop over 100 simulated devices against a dmflow rollout of them (~10 min)
	DMFLOW_BENCH_OUT=$(BENCH_OUT)/bench-baseline.md $(BENCH_TEST) -timeout 120m -run '^TestMeasureBaseline$$' 2>&1 \
		| tee $(BIN)/bench-baseline.log | $(BENCH_SHOW) ; exit $${PIPESTATUS[0]}
	@cat $(BIN)/bench-baseline.md

bench-rollout: build ## firmware rollouts of 1,000 and 10,000 simulated devices: unbound (S3, one worker) and quota-bound (S1, two workers, two rollouts, the hub budget pacing), against Temporal's ceiling for the shape (~1 h)
	ulimit -n "$$(ulimit -Hn)"; DMFLOW_BENCH_OUT=$(BENCH_OUT)/bench-rollout.md $(BENCH_TEST) -timeout 240m -run '^TestMeasureRollout$$' 2>&1 \
		| tee $(BIN)/bench-rollout.log | $(BENCH_SHOW) ; exit $${PIPESTATUS[0]}
	@cat $(BIN)/bench-rollout.md

bench-cluster: build cluster-build ## the 10,000-device unbound rollout and its ceiling on make up-cluster's Temporal server on PostgreSQL (~20 min)
	ulimit -n "$$(ulimit -Hn)"; DMFLOW_BENCH_ROLLOUT_SIZES=10000 DMFLOW_BENCH_ROLLOUT_REGIMES=cluster DMFLOW_BENCH_ROLLOUT_CONCURRENT=400 \
		DMFLOW_BENCH_OUT=$(BENCH_OUT)/bench-cluster.md $(BENCH_TEST) -timeout 120m -run '^TestMeasureRollout$$' 2>&1 \
		| tee $(BIN)/bench-cluster.log | $(BENCH_SHOW) ; exit $${PIPESTATUS[0]}
	@cat $(BIN)/bench-cluster.md

# bench-scale's size, its rollout's --max-concurrent and its Temporal dev server (memory or
# sqlite); its results stay in the repository.
SCALE_DEVICES ?= 100000
SCALE_CONCURRENT ?= 400
SCALE_SERVER ?= memory
SCALE_OUT := $(CURDIR)/bench/scale

bench-scale: build ## one rollout of SCALE_DEVICES (100,000) devices, S3, no ceiling: time, largest input, most events in one run, memory; a simdevice fleet where the open-files limit allows as many connections, else stand-ins played by localhub; results kept in bench/scale/ (~40 min)
	@mkdir -p $(SCALE_OUT)
	ulimit -Hn 400000 2>/dev/null || true; ulimit -n "$$(ulimit -Hn)"; \
	DMFLOW_BENCH_ROLLOUT_SIZES=$(SCALE_DEVICES) DMFLOW_BENCH_ROLLOUT_REGIMES=unbound DMFLOW_BENCH_ROLLOUT_CEILING=off \
	DMFLOW_BENCH_ROLLOUT_CONCURRENT=$(SCALE_CONCURRENT) DMFLOW_BENCH_ROLLOUT_UNBOUND_SERVER=$(SCALE_SERVER) \
	DMFLOW_BENCH_OUT=$(SCALE_OUT)/bench-scale.md \
	$(BENCH_TEST) -timeout 300m -run '^TestMeasureRollout$$' 2>&1 | tee $(BIN)/bench-scale.log | $(BENCH_SHOW) ; exit $${PIPESTATUS[0]}
	@cat $(SCALE_OUT)/bench-scale.md

bench-fleet: ## simdevice fleet of COUNT (default 10000) against its own localhub: connect time, memory (~1 min)
	@mkdir -p $(BIN)
	scripts/bench-fleet.sh > $(BIN)/bench-fleet.md.tmp
	mv $(BIN)/bench-fleet.md.tmp $(BIN)/bench-fleet.md
	@cat $(BIN)/bench-fleet.md

test: FUZZTIME = 3s
test: lint build cluster-build test-unit fuzz test-integration ## everything CI runs; starts and stops what the tests need

clean: down ## remove built binaries and local state
	rm -rf $(BIN) .dmflow
