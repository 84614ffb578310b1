#!/usr/bin/env bash
# Build the mosaic step-ca binaries (step-ca v0.19 from Debian's library
# sources) into a cache folder, once.
#
#   deploy/step-ca/build.sh [CACHE_DIR]     (default: <repo>/.cache/step-ca)
#
# Prints two lines on stdout: the absolute paths of
#   CACHE_DIR/mosaic-step-ca        (the server:  mosaic-step-ca <ca.json> --password-file F)
#   CACHE_DIR/mosaic-step-ca-init   (CA initialiser, see README.md)
# Everything else goes to stderr. A binary is rebuilt only when one of
# deploy/step-ca/cmd/**, this script, or the installed Debian package is newer.
#
# Requirements (Debian 12 "bookworm"), nothing else:
#   apt-get install golang-go golang-github-smallstep-certificates-dev
# The -dev package pulls every Go library it needs (golang-step-crypto-dev,
# golang-step-cli-utils-dev, golang-step-linkedca-dev, golang-github-urfave-cli-dev,
# golang-github-smallstep-nosql-dev, golang-github-dgraph-io-badger-dev, ...);
# no other golang-*-dev package had to be installed by hand. The build uses
# CGO_ENABLED=0, so no C compiler is needed and the binaries are static
# (the cgo-only KMS back-ends, YubiKey/PKCS#11, are left out).
# When run as root and those two packages are missing, this script installs
# them with apt-get (set MOSAIC_STEP_CA_NO_APT=1 to forbid that).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
CACHE_DIR="${1:-$REPO_ROOT/.cache/step-ca}"
SRC_PKG=/usr/share/gocode/src/github.com/smallstep/certificates
DPKG_STAMP=/var/lib/dpkg/info/golang-github-smallstep-certificates-dev.list

log() { echo "step-ca build: $*" >&2; }

need_install=0
command -v go >/dev/null 2>&1 || need_install=1
[ -d "$SRC_PKG/commands" ] && [ -d "$SRC_PKG/pki" ] || need_install=1
if [ "$need_install" = 1 ]; then
    if [ "$(id -u)" = 0 ] && [ "${MOSAIC_STEP_CA_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing golang-go golang-github-smallstep-certificates-dev with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q golang-go golang-github-smallstep-certificates-dev >&2 \
            || { apt-get update -q >&2 && apt-get install -y -q golang-go golang-github-smallstep-certificates-dev >&2; }
    else
        log "missing Go or $SRC_PKG; run: apt-get install golang-go golang-github-smallstep-certificates-dev"
        exit 1
    fi
fi

mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"

# One build at a time per cache dir (parallel test workers may all call us).
exec 9>"$CACHE_DIR/.build.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

stale() { # $1 = binary, $2 = cmd dir
    local bin="$1" dir="$2"
    [ -x "$bin" ] || return 0
    [ -n "$(find "$dir" "$HERE/build.sh" -newer "$bin" -print -quit)" ] && return 0
    [ -e "$DPKG_STAMP" ] && [ "$DPKG_STAMP" -nt "$bin" ] && return 0
    return 1
}

export GOPATH=/usr/share/gocode GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
# Go needs a build cache; keep go's default unless it has none (no HOME).
case "$(go env GOCACHE 2>/dev/null)" in
    ""|off) export GOCACHE="$CACHE_DIR/go-build" ;;
esac

for name in mosaic-step-ca mosaic-step-ca-init; do
    bin="$CACHE_DIR/$name"
    if stale "$bin" "$HERE/cmd/$name"; then
        log "building $name ($(go version | awk '{print $3}'), GOPATH=$GOPATH, GO111MODULE=off, CGO_ENABLED=0)"
        start=$(date +%s)
        (cd "$HERE" && go build -trimpath -o "$bin.tmp.$$" "./cmd/$name")
        mv -f "$bin.tmp.$$" "$bin"
        log "built $bin in $(( $(date +%s) - start ))s"
    else
        log "up to date: $bin"
    fi
done

echo "$CACHE_DIR/mosaic-step-ca"
echo "$CACHE_DIR/mosaic-step-ca-init"
