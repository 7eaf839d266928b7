#!/usr/bin/env bash
# Set up a development/test environment for d2tls on Debian (run as root; idempotent).
#
#  1. installs the third-party tools the tests drive (gnutls-bin, openssl, graphviz,
#     redis-server, iproute2, tshark, maude for Tamarin, knot: Knot DNS for the TwinPeaks DNS
#     tests, which start their own knotd on 127.0.0.1) with apt-get, only when one is missing;
#  2. creates .venv with Python >= 3.11 if it does not exist;
#  3. installs d2tls editable with its test extras into .venv;
#  4. builds mbedTLS's ssl_server2 and ssl_client2 from Debian's source package
#     (scripts/build-mbedtls.sh): peers that no Debian binary package ships.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- Python interpreter ------------------------------------------------------------------
PYTHON=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$PYTHON" ]; then
    log "error: Python >= 3.11 not found (python3.11 / python3)" >&2
    exit 1
fi
log "using $PYTHON ($("$PYTHON" --version 2>&1))"

# --- system packages ---------------------------------------------------------------------
PACKAGES=(gnutls-bin openssl graphviz redis-server iproute2 tshark maude knot)
# A Debian python3 needs python3-venv for "python -m venv" (ensurepip).
if [ ! -d .venv ] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    PACKAGES+=(python3-venv)
fi
MISSING=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || MISSING+=("$pkg")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "error: missing packages (${MISSING[*]}); run as root" >&2
        exit 1
    fi
    log "installing ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${MISSING[@]}"
    # The knot package enables a system service; the tests run their own knotd on 127.0.0.1
    # and a free port, so the packaged one is stopped and disabled (systemd or sysvinit).
    if [[ " ${MISSING[*]} " == *" knot "* ]]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now knot.service || true
        elif [ -x /etc/init.d/knot ]; then
            /etc/init.d/knot stop || true
            update-rc.d knot disable || true
        fi
    fi
else
    log "system packages present: ${PACKAGES[*]}"
fi

# --- virtual environment -----------------------------------------------------------------
if [ -x .venv/bin/python ]; then
    log ".venv exists ($(.venv/bin/python --version 2>&1))"
else
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi

log "installing d2tls (editable, with test extras) into .venv"
.venv/bin/pip install -e '.[test]'

log "mbedTLS ssl_server2 (conformance peer)"
bash "$ROOT/scripts/build-mbedtls.sh"
bash "$ROOT/scripts/build-wolfssl.sh"  # wolfssl_server (conformance peer) from libwolfssl-dev

log "done: activate with 'source .venv/bin/activate'; tests need root for 'ip netns'"
