#!/usr/bin/env bash
# Build scripts/peers/wolfssl_server.c (a single-threaded wolfSSL DTLS 1.2 server, the
# conformance peer src/d2tls/lab/peers.py WolfSSLServer) against Debian's libwolfssl-dev.
#
# Idempotent and fast when already built: the binary lives in $D2TLS_WOLFSSL_DIR
# (default /var/cache/d2tls/wolfssl) as bin/wolfssl_server, with bin/VERSION naming the
# libwolfssl-dev version and bin/SOURCE the SHA-256 of the source it was built from (a changed
# source is rebuilt). Needs root the first time (apt-get install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="$ROOT/scripts/peers/wolfssl_server.c"
CACHE="${D2TLS_WOLFSSL_DIR:-/var/cache/d2tls/wolfssl}"
BIN="$CACHE/bin/wolfssl_server"
log() { printf '[build-wolfssl] %s\n' "$*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

need=()
for pkg in libwolfssl-dev gcc libc6-dev; do
    installed "$pkg" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
fi

version="libwolfssl-dev $(dpkg-query -W -f='${Version}' libwolfssl-dev) (Debian package)"
digest="$(sha256sum "$SOURCE" | cut -d' ' -f1)"
if [ -x "$BIN" ] && [ "$(cat "$CACHE/bin/VERSION" 2>/dev/null)" = "$version" ] &&
    [ "$(cat "$CACHE/bin/SOURCE" 2>/dev/null)" = "$digest" ]; then
    log "present: $BIN ($version)"
    exit 0
fi

mkdir -p "$CACHE/bin"
log "building $BIN against $version"
gcc -std=c99 -D_POSIX_C_SOURCE=200809L -O2 -Wall -Wextra -Werror \
    -o "$BIN.tmp" "$SOURCE" -lwolfssl
mv "$BIN.tmp" "$BIN"
echo "$version" >"$CACHE/bin/VERSION"
echo "$digest" >"$CACHE/bin/SOURCE"
log "built $BIN ($version)"
