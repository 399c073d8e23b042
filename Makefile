# The two set-up commands of the README. Each installs what a fresh machine lacks first.

.PHONY: demo test setup certs

setup:
	@ops/setup.sh

# A 3-node cluster in one process; HTTP on 12380, 22380, 32380. Ctrl-C stops it.
demo: setup
	cargo run --release --bin ringkv -- demo

# Unit and integration tests (real RocksDB, real QUIC, real node processes).
test: setup
	cargo test --workspace --features ringkv/failpoints -- --test-threads 2

# Dev certificates for ops/Procfile (kept if they exist).
certs: setup
	cargo run --release --bin ringkv -- certs --dir ringkv-data/certs --nodes 3
