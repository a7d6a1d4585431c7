#!/bin/sh
# Regenerates docs/benchmarks.md: builds the release binary, installs Envoy into
# loadtest/peers/.venv, runs every scenario through `compare` with loadtest/peers/compare.yaml
# (load generator + mock on core 0, proxies on core 1), then renders the Markdown.
#
#   loadtest/report.sh                 # full run (3 rounds x 10 s per target per scenario)
#   QUICK=1 loadtest/report.sh         # 1 round x 3 s, for a smoke check
#   SCENARIOS="chat-small pii-32k" loadtest/report.sh
#
# Port variables (MOCK_PORT, SLUICE_PORT, ENVOY_PORT, ...) shift every listener; see
# loadtest/peers/compare.yaml. The sluice target is skipped with a note until
# target/release/sluice and loadtest/peers/sluice.yaml exist (or SLUICE_BIN/SLUICE_CONFIG).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p sluice -p sluice-loadtest
bin=target/release/sluice-loadtest
loadtest/peers/install-envoy.sh >/dev/null || echo "report.sh: Envoy not installed; envoy targets will be skipped" >&2
results=loadtest/results
mkdir -p "$results"
extra=""
if [ -n "${QUICK:-}" ]; then extra="--rounds 1 --duration 3s --warmup 1s"; fi
for sc in ${SCENARIOS:-chat-small chat-rate-2000 inspect-rate-2000 chat-sse pii-4k pii-4k-rate-1000 pii-32k error-mix long-streams}; do
    echo "== $sc" >&2
    sleep 2  # let the previous run's processes release their ports
    # shellcheck disable=SC2086
    cfg=loadtest/peers/compare.yaml; [ "$sc" = inspect-rate-2000 ] && cfg=loadtest/peers/compare-inspect.yaml
    more=""
    if [ "$sc" = chat-rate-2000 ]; then
        # sluice with busy polling, for the p99 row of the Goals table.
        more="--target sluice-busypoll=http://127.0.0.1:15501 --cpus sluice-busypoll=1 --start sluice-busypoll=./start-sluice-busypoll.sh"
    fi
    "$bin" compare --config "$cfg" --scenario "loadtest/scenarios/$sc.yaml" \
        --out "$results/$sc.json" $extra $more || echo "report.sh: $sc finished with status $? (see above)" >&2
done
"$bin" report --results "$results" --out docs/benchmarks.md
