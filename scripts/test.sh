#!/usr/bin/env bash
# Run every test sluice has, on a fresh Debian machine with Rust (as root), or a dev box.
# Installs what the tests need (apt, pip) when it is missing, then:
#   1. format and lint gates (cargo fmt --check, cargo clippy -D warnings)
#   2. unit, property, golden-fixture and integration tests of every crate (cargo test)
#   3. end-to-end tests: the real binaries, the bundled mock, curl and the openai SDK (pytest),
#      once on io_uring and once on the epoll fallback (MONOIO_FORCE_LEGACY_DRIVER=1).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

need_apt=()
for bin in curl:curl openssl:openssl ss:iproute2 python3:python3 prometheus:prometheus \
           iptables:iptables setpriv:util-linux redis-server:redis-server; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need_apt+=("${bin##*:}")
done
if ((${#need_apt[@]})); then
  step "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import openai, pytest, opentelemetry.proto, cryptography' 2>/dev/null; then
  step "pip install openai pytest opentelemetry-proto cryptography"
  "$PY" -m pip install -q --disable-pip-version-check openai pytest opentelemetry-proto cryptography
fi
# test_k8s.py: an independent YAML reader and JSON Patch implementation. test_tls.py and
# test_auth.py read and make certificates and keys with `cryptography`.
if ! "$PY" -c 'import yaml, jsonpatch' 2>/dev/null; then
  step "pip install pyyaml jsonpatch"
  "$PY" -m pip install -q --disable-pip-version-check pyyaml jsonpatch
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo build"
cargo build --workspace -q

step "cargo test"
cargo test --workspace -q 2>&1 | tail -n 40

step "end-to-end tests (io_uring)"
(cd tests/e2e && "$PY" -m pytest -q -p no:cacheprovider .)

step "end-to-end data-plane tests on the epoll fallback"
(cd tests/e2e && MONOIO_FORCE_LEGACY_DRIVER=1 "$PY" -m pytest -q -p no:cacheprovider test_dataplane.py)
