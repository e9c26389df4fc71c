#!/bin/sh
# Runs inside the arm64 userland (via chroot.sh): installs the wheel, then the device tests.
#
# Usage: /tests/inside.sh VENV_KEY WHEEL [PYTEST ARGS...]
#
# /opt/edgekit is a venv kept between runs while VENV_KEY (the userland and pyproject.toml)
# is unchanged; the dependencies' wheels are downloaded once into /cache/wheelhouse-KEY
# (pip needs the host's CA bundle: PIP_CERT, set by chroot.sh). edgekit itself is always
# reinstalled from WHEEL, built from the checkout by this run, binary wheels only.
set -eu
key="$1"; wheel="$2"; shift 2
venv=/opt/edgekit
house="/cache/wheelhouse-$key"
echo "uname -m: $(uname -m)"
if [ "$(cat "$venv/.edgekit-key" 2>/dev/null)" != "$key" ]; then
    echo "creating $venv (first run for this userland and pyproject.toml)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    if [ ! -f "$house/.complete" ]; then
        rm -rf "$house"
        "$venv/bin/pip" download -q --only-binary=:all: -d "$house" "$wheel[device]" pytest
        rm -f "$house"/edgekit_classify-*.whl
        touch "$house/.complete"
        for old in /cache/wheelhouse-*; do [ "$old" = "$house" ] || rm -rf "$old"; done
    fi
fi
"$venv/bin/pip" uninstall -q -y edgekit-classify 2>/dev/null || true
"$venv/bin/pip" install -q --no-index --find-links "$house" --only-binary=:all: \
    "$wheel[device]" pytest
echo "$key" > "$venv/.edgekit-key"
"$venv/bin/python" -c "import edge_runtime, numpy, cv2, ai_edge_litert; from importlib.metadata import version as v; print('installed: edgekit-classify', v('edgekit-classify'), 'numpy', numpy.__version__, 'opencv', cv2.__version__, 'ai-edge-litert', v('ai-edge-litert'))"
cd /tmp
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs /tests/test_device.py "$@"
