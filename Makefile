# Tidings: `make run` starts a dev node, `make test` runs every test.
# One persistent target directory outside the clone: RocksDB's C++ takes
# a quarter of an hour to build cold, so it is built once and kept.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tidings-target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug/tidings

.PHONY: run test build deps test-deps browser-test bench bench-deps bench-rates fmt lint fuzz
RELEASE := $(CARGO_TARGET_DIR)/release

run: deps build
	$(BIN) --dev --listen 127.0.0.1:8080 --data-dir ./data

test: test-deps build
	@if $(CARGO) fmt --version >/dev/null 2>&1; then $(CARGO) fmt --all --check; \
	else echo "rustfmt is missing: formatting not checked"; fi
	$(CARGO) test --workspace
	$(MAKE) browser-test

# --workspace keeps feature unification the same as `cargo test --workspace`,
# so RocksDB is not built a second time.
build:
	$(CARGO) build --workspace --bins

deps:
	@scripts/install-deps.sh

# The fuzz targets (fuzz/), TIDINGS_FUZZ_CASES cases each (a million by
# default), in the debug build and target directory `make test` uses.
# Not part of `make test`, which runs their regression tests only.
fuzz: deps
	$(CARGO) test --workspace --test fuzz -- --ignored --nocapture

test-deps:
	@scripts/install-deps.sh test

browser-test:
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	cd tests/browser && TIDINGS_BIN=$(BIN) node --test

# Benchmarks need a release build (a second, cold RocksDB build the first time).
bench-deps:
	@scripts/install-deps.sh bench
	cd bench/peers && npm ci --no-audit --no-fund --loglevel=error
	$(CARGO) build --release --workspace --bins

bench: bench-deps
	$(RELEASE)/tidings-bench compare --server $(RELEASE)/tidings --runs 3 --rate 4000 --seconds 10
	$(RELEASE)/tidings-bench appends --server $(RELEASE)/tidings --seconds 10
	$(RELEASE)/tidings-bench cluster --server $(RELEASE)/tidings --runs 3 --rate 2000 --seconds 10

# The rate ladder that BENCHMARKS.md's "same p99" figures rest on (~18 min).
bench-rates: bench-deps
	$(RELEASE)/tidings-bench compare --server $(RELEASE)/tidings --runs 3 --seconds 10 \
		--rates 1500,2000,2500,3000,3500,4000 --plot bench/results/rooms-rates.svg

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
