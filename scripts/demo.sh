#!/usr/bin/env bash
# The demo: build, start the bundled mock model server and sluice in front of it, send an
# OpenAI chat request (JSON, then a streamed one) through sluice with curl, show the metrics
# sluice recorded, then stop both. Set KEEP=1 to leave them running.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

echo "== building (release)"
cargo build --release -q -p sluice -p sluice-loadtest
BIN=target/release
logdir=$(mktemp -d)

$BIN/sluice-loadtest mock --listen 127.0.0.1:19090 --itl-ms 30 --tokens 8 >"$logdir/mock.log" 2>&1 &
MOCK=$!
$BIN/sluice run --config deploy/demo.yaml --log-format text >"$logdir/sluice.log" 2>&1 &
SLUICE=$!
cleanup() { [ "${KEEP:-}" = 1 ] || kill "$SLUICE" "$MOCK" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:15000/ready >/dev/null && break; sleep 0.1; done

echo; echo "== POST /v1/chat/completions through sluice (127.0.0.1:15001 -> mock 127.0.0.1:19090)"
curl -sS -i http://127.0.0.1:15001/v1/chat/completions -H 'content-type: application/json' \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
echo; echo; echo "== the same, streamed (each event arrives as the mock sends it, 30 ms apart)"
curl -sS -N http://127.0.0.1:15001/v1/chat/completions -H 'content-type: application/json' \
  -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
sleep 0.3
echo; echo "== sluice metrics (excerpt of http://127.0.0.1:15000/metrics)"
curl -sS http://127.0.0.1:15000/metrics | grep -E '^sluice_(requests_total|io_driver_info|overhead_seconds_count)' || true
echo; echo "== sluice log (access log lines are JSON)"
cat "$logdir/sluice.log"
