#!/usr/bin/env bash
# Refresh the vendored uPlot (the console's chart library) from the npm registry: fetch the pinned
# tarball, check it against the registry's published integrity hash (sha512), and copy the
# minified browser build, its stylesheet and its licence into web/static/vendor/uplot/.
# Usage: scripts/vendor-uplot.sh [VERSION]   (make vendor-uplot UPLOT_VERSION=...)
set -euo pipefail
VERSION="${1:-1.6.32}"
# The integrity the registry publishes for the pinned version; another version is checked against
# the hash the registry gives for it.
PINNED_VERSION="1.6.32"
PINNED_INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
REGISTRY="${NPM_REGISTRY:-https://registry.npmjs.org}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/web/static/vendor/uplot"

if [ "$VERSION" = "$PINNED_VERSION" ]; then
  INTEGRITY="$PINNED_INTEGRITY"
else
  INTEGRITY="$(curl -fsS "$REGISTRY/uplot/$VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["dist"]["integrity"])')"
fi
case "$INTEGRITY" in
  sha512-*) ;;
  *) echo "uplot $VERSION: no sha512 integrity from the registry" >&2; exit 1 ;;
esac

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
curl -fsS -o "$WORK/uplot.tgz" "$REGISTRY/uplot/-/uplot-$VERSION.tgz"
GOT="sha512-$(openssl dgst -sha512 -binary "$WORK/uplot.tgz" | base64 -w0)"
if [ "$GOT" != "$INTEGRITY" ]; then
  echo "uplot $VERSION: integrity mismatch (expected $INTEGRITY, got $GOT)" >&2
  exit 1
fi
tar -xzf "$WORK/uplot.tgz" -C "$WORK" package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE
mkdir -p "$DEST"
cp "$WORK/package/dist/uPlot.iife.min.js" "$WORK/package/dist/uPlot.min.css" "$WORK/package/LICENSE" "$DEST/"
printf 'uplot %s\n%s\n' "$VERSION" "$INTEGRITY" > "$DEST/VERSION"
echo "web/static/vendor/uplot: uplot $VERSION ($INTEGRITY)"
