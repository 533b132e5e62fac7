#!/usr/bin/env bash
# Prints the directory of a Node 24 binary, installing Node 24 from the npm registry (package
# node@24) into .tools/node24 when the machine's node is another major. Callers put the printed
# directory first on PATH.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

want=24
if command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" = "$want" ]; then
  dirname "$(command -v node)"
  exit 0
fi
dir="$KMJ_TOOLS/node$want"
bin="$dir/node_modules/node/bin"
if [ ! -x "$bin/node" ] || [ "$("$bin/node" -p 'process.versions.node.split(".")[0]')" != "$want" ]; then
  say "installing Node $want from the npm registry into $dir"
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"private":true}' >"$dir/package.json"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "node@$want" >&2
fi
"$bin/node" --version >/dev/null || die "Node $want did not install"
echo "$bin"
