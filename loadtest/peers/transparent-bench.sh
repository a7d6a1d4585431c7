#!/bin/sh
# Measure transparent mode against explicit mode (compare-transparent.yaml), in two network
# namespaces joined by a veth pair (10.213.0.0/24), so no rule ever touches the host's own
# network. As root. Arguments go to `sluice-loadtest compare` (--scenario, --out, --duration...).
#   app   (10.213.0.1): load generator, both sluice processes, the `sluice iptables` rules
#   model (10.213.0.2, 10.213.0.3): the mock upstream, pinned to CPU 0
# SLUICE_BIN / SLUICE_LOADTEST_BIN override the binaries (default: release builds).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$root/target/release/sluice}
LOADTEST_BIN=${SLUICE_LOADTEST_BIN:-$root/target/release/sluice-loadtest}
export SLUICE_BIN
app=sl-bench-app
model=sl-bench-model
mock_pid=

cleanup() {
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
  ip netns del "$app" 2>/dev/null || true
  ip netns del "$model" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

cleanup
ip netns add "$app"
ip netns add "$model"
ip -n "$app" link set lo up
ip -n "$model" link set lo up
ip link add slbench0 type veth peer name slbench1
ip link set slbench0 netns "$app"
ip link set slbench1 netns "$model"
ip -n "$app" addr add 10.213.0.1/24 dev slbench0
ip -n "$model" addr add 10.213.0.2/24 dev slbench1
ip -n "$model" addr add 10.213.0.3/24 dev slbench1
ip -n "$app" link set slbench0 up
ip -n "$model" link set slbench1 up

ip netns exec "$model" taskset -c 0 "$LOADTEST_BIN" mock --listen 0.0.0.0:19090 > /dev/null &
mock_pid=$!
tries=0
until ip netns exec "$app" curl -sf -o /dev/null http://10.213.0.3:19090/__mock/health; do
  tries=$((tries + 1))
  [ "$tries" -lt 100 ] || { echo "mock did not start" >&2; exit 1; }
  sleep 0.1
done
# Only the mock's first address is intercepted; inbound interception is off.
ip netns exec "$app" "$SLUICE_BIN" iptables --outbound-port 15201 \
  --include-outbound-cidrs 10.213.0.2/32 --include-inbound-ports ''
ip netns exec "$app" "$LOADTEST_BIN" compare --config "$here/compare-transparent.yaml" "$@"
