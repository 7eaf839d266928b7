#!/usr/bin/env bash
# Build mbedTLS's ssl_server2 and ssl_client2 sample programs (not shipped in any Debian binary
# package) from Debian's mbedtls source package, for the peers in src/d2tls/lab/peers.py
# (MbedTLSServer, MbedTLSClient).
#
# Idempotent and fast when already built: the binaries live in $D2TLS_MBEDTLS_DIR
# (default /var/cache/d2tls/mbedtls) as bin/ssl_server2 and bin/ssl_client2, with bin/VERSION
# naming the source package version. A program that is missing (e.g. a cache made before
# ssl_client2 was added) is built from the cached source. Needs root the first time (deb-src
# line, apt-get update).
set -euo pipefail

CACHE="${D2TLS_MBEDTLS_DIR:-/var/cache/d2tls/mbedtls}"
PROGRAMS=(ssl_server2 ssl_client2)
log() { printf '[build-mbedtls] %s\n' "$*"; }

missing=()
for program in "${PROGRAMS[@]}"; do
    [ -x "$CACHE/bin/$program" ] || missing+=("$program")
done
if [ "${#missing[@]}" -eq 0 ] && [ -s "$CACHE/bin/VERSION" ]; then
    log "present: ${PROGRAMS[*]} in $CACHE/bin ($(cat "$CACHE/bin/VERSION"))"
    exit 0
fi
[ -s "$CACHE/bin/VERSION" ] || missing=("${PROGRAMS[@]}")

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

log "building ${missing[*]} from $srcdir ($version)"
jobs="$(nproc 2>/dev/null || echo 2)"
make -C "$srcdir/library" -j"$jobs" static >/dev/null
mkdir -p "$CACHE/bin"
for program in "${missing[@]}"; do
    make -C "$srcdir/programs" -j"$jobs" "ssl/$program" >/dev/null
    install -m 0755 "$srcdir/programs/ssl/$program" "$CACHE/bin/$program"
done
echo "mbedtls $version (Debian source package)" >"$CACHE/bin/VERSION"
log "built ${missing[*]} in $CACHE/bin ($(cat "$CACHE/bin/VERSION"))"
