#!/usr/bin/env bash
# Make `prometheus` and `promtool` available to the tests without root: a system copy on
# PATH is used as it is; otherwise each missing one is built once from the Go module proxy
# (github.com/prometheus/prometheus, Apache-2.0) into the streampulse cache:
#
#   ${STREAMPULSE_CACHE_DIR:-$HOME/.cache/streampulse}/prometheus-$VERSION/bin/{prometheus,promtool}
#
# Idempotent: a marker written after a complete build makes the next run a no-op.
# Needs Go (1.25+) on PATH. The build leaves out Prometheus' cloud service discovery
# (tag remove_all_sd): the tests scrape static targets, and it halves what is downloaded.
set -euo pipefail

VERSION="v0.316.0"  # the Go module version of Prometheus 3.16.0; keep in step with tests/services/binaries.py
RELEASE="3.16.0"
TOOLS=(prometheus promtool)

cache_root="${STREAMPULSE_CACHE_DIR:-$HOME/.cache/streampulse}"
dest="$cache_root/prometheus-$VERSION"
marker="$dest/.built"

say() { echo "fetch-prometheus: $*"; }
die() { echo "fetch-prometheus: ERROR: $*" >&2; exit 1; }

missing=()
for tool in "${TOOLS[@]}"; do
    if command -v "$tool" >/dev/null 2>&1; then
        continue  # a system copy wins (tests/services/binaries.py looks on PATH first)
    fi
    [[ -f "$marker" && -x "$dest/bin/$tool" ]] || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

# Go's own installer puts it here without touching PATH.
command -v go >/dev/null 2>&1 || { [[ -x /usr/local/go/bin/go ]] && PATH="$PATH:/usr/local/go/bin"; } || true
command -v go >/dev/null 2>&1 || die "go not found on PATH: install Go 1.25+ (https://go.dev/dl) or put prometheus and promtool on PATH"

mkdir -p "$cache_root" || die "cannot create cache directory $cache_root"
exec 9>"$cache_root/.prometheus-$VERSION.lock"
flock 9 || die "cannot lock $cache_root/.prometheus-$VERSION.lock"

packages=()
for tool in "${missing[@]}"; do
    [[ -f "$marker" && -x "$dest/bin/$tool" ]] || packages+=("github.com/prometheus/prometheus/cmd/$tool@$VERSION")
done
if [[ ${#packages[@]} -eq 0 ]]; then
    exit 0  # built by another run meanwhile
fi

say "building ${missing[*]} $VERSION with go install (once; a few minutes) into $dest/bin"
start_s="$(date +%s)"
mkdir -p "$dest"
tmp="$(mktemp -d "$cache_root/.prometheus-$VERSION.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The version stamp is what `prometheus --version` and its build-info API report.
if ! GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -tags=remove_all_sd" go install \
        -ldflags="-X github.com/prometheus/common/version.Version=$RELEASE" "${packages[@]}"; then
    die "go install failed (see above); is the Go module proxy reachable?"
fi
mkdir -p "$dest/bin"
for tool in "${missing[@]}"; do
    mv -f "$tmp/$tool" "$dest/bin/$tool"
done
echo "prometheus $VERSION" > "$marker"
say "done in $(( $(date +%s) - start_s )) s: $("$dest/bin/${missing[0]}" --version 2>&1 | head -1)"
