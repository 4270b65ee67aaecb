# Tally. The README's two commands: `make run` and `make test`.
GO        ?= go
BIN       := $(CURDIR)/bin
TOOLS     := $(CURDIR)/.bin
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
STATICCHECK_VERSION        := v0.8.2
TEST_TIMEOUT ?= 15m

.PHONY: all build run test test-short lint vet fmt-check staticcheck proto bench chaos clean

all: build

# Builds every command, tally-chaos included (make chaos runs the binary).
build:
	@mkdir -p "$(BIN)"
	$(GO) build -o "$(BIN)/" ./cmd/...

## run: start a local three-node cluster on 127.0.0.1 (data under ./data/); Ctrl-C stops it.
# exec: the script replaces make's shell, so a SIGTERM that make forwards to
# its child reaches the script, whose trap stops the three nodes.
run: build
	@BIN="$(BIN)" exec ./deploy/run-local.sh

## test: everything, with the race detector (what CI runs).
test: fmt-check vet staticcheck build
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

## test-short: quick tests without the race detector.
test-short:
	$(GO) test -short -count=1 ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	GOBIN="$(TOOLS)" $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	"$(TOOLS)/staticcheck" ./...

lint: fmt-check vet staticcheck

## proto: regenerate api/tallypb from api/tally.proto (protoc from Debian's protobuf-compiler).
proto:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler"; exit 1; }
	GOBIN="$(TOOLS)" $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN="$(TOOLS)" $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$(TOOLS):$$PATH" protoc -I api --go_out=api/tallypb --go_opt=paths=source_relative \
		--go-grpc_out=api/tallypb --go-grpc_opt=paths=source_relative api/tally.proto

clean:
	rm -rf "$(BIN)" "$(TOOLS)"

## chaos: long fault run with a summary: make chaos CHAOS_DURATION=30m [CHAOS_SEED=n] [CHAOS_ARGS="--shards 4 ..."]
## (results under ./results/chaos/; the CI profile is TestChaos in `make test`).
CHAOS_DURATION ?= 5m
CHAOS_SEED     ?= 0
# The built binary, not `go run` (which does not pass SIGTERM on), and exec:
# a SIGTERM to make reaches tally-chaos, which stops its nodes and summarizes.
chaos:
	@mkdir -p "$(BIN)"
	$(GO) build -o "$(BIN)/" ./cmd/tally-chaos
	$(GO) build -tags tally_unsafe -o "$(BIN)/tallyd-unsafe" ./cmd/tallyd
	exec "$(BIN)/tally-chaos" --tallyd "$(BIN)/tallyd-unsafe" --duration $(CHAOS_DURATION) --seed $(CHAOS_SEED) --results results/chaos $(CHAOS_ARGS)

## bench: the standard benchmark (deploy/bench.sh; BENCH_SECS, BENCH_CASES, ...) against a fresh local
## three-node cluster, then the PostgreSQL baseline, with ratios (results under ./results/bench/).
bench:
	exec ./deploy/bench.sh
