#!/bin/sh
# Start sluice for `compare` with the ports shifted by the environment (MOCK_PORT,
# SLUICE_PORT/SLUICE_ADMIN_PORT for sluice.yaml, SLUICE_FILTERS_PORT/..._ADMIN_PORT for
# sluice-filters.yaml; TLS_DIR for the certificate paths of sluice-intercept.yaml), then exec
# it so compare tracks its pid directly.
#   start-sluice.sh CONFIG PORT_VAR_DEFAULT ADMIN_DEFAULT PORT ADMIN
set -eu
cfg=$1
out=${OUT:-/tmp}
name=$(basename "$cfg" .yaml)
# The same config started twice (a control target) gets its own copy: sluice watches its
# config file, and a second copy written over the first would reload the first process.
if [ "$4" != "$2" ]; then name="$name-$4"; fi
sed -e "s/127.0.0.1:19090/127.0.0.1:${MOCK_PORT:-19090}/;
        s/127.0.0.1:$2/127.0.0.1:$4/;
        s/127.0.0.1:$3/127.0.0.1:$5/;
        s|/tmp/sluice-loadtest-tls|${TLS_DIR:-/tmp/sluice-loadtest-tls}|g" "$cfg" > "$out/$name.yaml"
exec "${SLUICE_BIN:-../../target/release/sluice}" run --config "$out/$name.yaml"
