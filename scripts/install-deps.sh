#!/usr/bin/env bash
# Installs what building and testing Tidings needs and the machine lacks.
#   scripts/install-deps.sh          clang and libclang (RocksDB's build)
#   scripts/install-deps.sh test     also Chromium and Node.js (browser test)
#   scripts/install-deps.sh bench    also Node.js and nats-server (peers)
set -euo pipefail

want=(clang libclang-dev)
case "${1:-}" in
  test) want+=(chromium nodejs npm) ;;
  bench) want+=(nodejs npm nats-server) ;;
esac

missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    # node and npm may come from elsewhere than Debian's packages
    case "$pkg" in
      nodejs) command -v node >/dev/null 2>&1 && continue ;;
      npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
