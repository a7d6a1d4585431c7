#!/bin/sh
# Certificates for compare-tls.yaml (TLS interception vs Envoy terminating and re-originating
# TLS), made with `sluice ca`. Writes ${TLS_DIR:-/tmp/sluice-loadtest-tls}:
#   upstream-ca/, upstream/   the mock's own CA and its certificate for api.openai.test
#                             (what sluice and Envoy verify when they re-encrypt)
#   intercept-ca/             the CA sluice mints leaves from (and the client trusts)
#   envoy/                    a fixed certificate for api.openai.test from the same CA, for
#                             Envoy's listener (Envoy cannot mint per SNI)
#   client-bundle.pem         what the load generator trusts (SLUICE_LOADTEST_CA_FILE)
# Idempotent: an existing directory is reused.
set -eu
dir=${TLS_DIR:-/tmp/sluice-loadtest-tls}
sluice=${SLUICE_BIN:-../../target/release/sluice}
if [ -f "$dir/client-bundle.pem" ]; then
  echo "$dir: already populated"
  exit 0
fi
mkdir -p "$dir"
"$sluice" ca init --out "$dir/upstream-ca" --trust-domain mock.test >/dev/null
"$sluice" ca issue --ca "$dir/upstream-ca" --spiffe spiffe://mock.test/ns/loadtest/sa/mock \
  --dns api.openai.test --dns localhost --out "$dir/upstream" --days 30 >/dev/null
"$sluice" ca init --out "$dir/intercept-ca" --trust-domain intercept.local >/dev/null
"$sluice" ca issue --ca "$dir/intercept-ca" --spiffe spiffe://intercept.local/ns/loadtest/sa/envoy \
  --dns api.openai.test --out "$dir/envoy" --days 30 >/dev/null
cat "$dir/intercept-ca/ca.pem" "$dir/upstream-ca/ca.pem" > "$dir/client-bundle.pem"
echo "$dir: ready"
