#!/usr/bin/env bash
# Installs what building ringkv needs on a fresh Debian machine: libclang (RocksDB's Rust
# bindings are generated with bindgen at build time) and a C++ compiler for RocksDB itself.
# Idempotent and quiet when everything is already there.
set -euo pipefail

need=()
# libclang itself (libclang.so / libclang-NN.so), not libclang-cpp, which Debian images
# often carry without it.
if ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so' \
   && ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if [ ${#need[@]} -gt 0 ]; then
  echo "ops/setup.sh: installing ${need[*]}" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "ops/setup.sh: cargo is missing; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
