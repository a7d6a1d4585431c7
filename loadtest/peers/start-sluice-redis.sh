#!/bin/sh
# Start a throw-away redis-server on 127.0.0.1:16379 (unless one answers there
# already), then sluice-policy-global.yaml through start-sluice.sh: the global-mode rate limits of
# the policy comparison. The Redis counters are reset so `redis-cli -p PORT info commandstats`
# after the run counts exactly the lease round trips of this run.
#   start-sluice-redis.sh PORT ADMIN
set -eu
rp=16379 # the port in sluice-policy-global.yaml
if ! redis-cli -p "$rp" ping >/dev/null 2>&1; then
    redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --logfile "${OUT:-/tmp}/redis-loadtest.log" >/dev/null
    i=0
    until redis-cli -p "$rp" ping >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -lt 50 ] || { echo "redis-server did not start" >&2; exit 1; }
        sleep 0.1
    done
fi
redis-cli -p "$rp" config resetstat >/dev/null
exec ./start-sluice.sh sluice-policy-global.yaml 15401 15400 "$1" "$2"
