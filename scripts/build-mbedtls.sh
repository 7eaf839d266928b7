#!/usr/bin/env bash
# Build mbedTLS's ssl_server2 sample program (not shipped in any Debian binary package) from
# Debian's mbedtls source package, for the conformance peer (src/d2tls/peers.py, MbedTLSServer).
#
# Idempotent and fast when already built: the binary lives in $D2TLS_MBEDTLS_DIR
# (default /var/cache/d2tls/mbedtls) as bin/ssl_server2, with bin/VERSION naming the source
# package version. Needs root the first time (deb-src line, apt-get update).
set -euo pipefail

CACHE="${D2TLS_MBEDTLS_DIR:-/var/cache/d2tls/mbedtls}"
BIN="$CACHE/bin/ssl_server2"
log() { printf '[build-mbedtls] %s\n' "$*"; }

if [ -x "$BIN" ] && [ -s "$CACHE/bin/VERSION" ]; then
    log "present: $BIN ($(cat "$CACHE/bin/VERSION"))"
    exit 0
fi

need=()
for tool in dpkg-source make gcc; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends dpkg-dev make gcc libc6-dev
fi

# Enable deb-src for the suites the machine already uses (deb822 or one-line format).
SRC_LIST=/etc/apt/sources.list.d/d2tls-deb-src.sources
if ! apt-cache showsrc mbedtls >/dev/null 2>&1 || [ -z "$(apt-cache showsrc mbedtls 2>/dev/null)" ]; then
    if [ ! -f "$SRC_LIST" ]; then
        codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
        log "adding deb-src for $codename ($SRC_LIST)"
        cat >"$SRC_LIST" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $codename-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    apt-get update
fi

mkdir -p "$CACHE/src"
cd "$CACHE/src"
if ! ls -d mbedtls-*/ >/dev/null 2>&1; then
    log "downloading the mbedtls source package"
    # Unpack ourselves (dpkg-source -x), so no build dependencies are needed.
    apt-get source --download-only mbedtls
    dsc="$(ls mbedtls_*.dsc | head -n1)"
    dpkg-source --no-check -x "$dsc"
fi
srcdir="$(ls -d mbedtls-*/ | head -n1)"
srcdir="${srcdir%/}"
version="$(ls mbedtls_*.dsc | head -n1 | sed -e 's/^mbedtls_//' -e 's/\.dsc$//')"

log "building ssl_server2 from $srcdir ($version)"
jobs="$(nproc 2>/dev/null || echo 2)"
make -C "$srcdir/library" -j"$jobs" static >/dev/null
make -C "$srcdir/programs" -j"$jobs" ssl/ssl_server2 >/dev/null

mkdir -p "$CACHE/bin"
install -m 0755 "$srcdir/programs/ssl/ssl_server2" "$BIN"
echo "mbedtls $version (Debian source package)" >"$CACHE/bin/VERSION"
log "built $BIN ($(cat "$CACHE/bin/VERSION"))"
