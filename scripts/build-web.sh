#!/usr/bin/env bash
# Vendor the web console's third-party browser code: install web/package-lock.json's exact
# versions of xterm.js and noVNC with npm, then copy the files the page loads, with their
# LICENSE files, into ctd/web/static/vendor/ (gitignored). Run by setup.sh; run it again after
# changing web/package.json. Without it the console page still lists and starts instances and
# says how to get the terminal and display.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
REPO=$PWD
OUT=$REPO/ctd/web/static/vendor

if ! command -v npm >/dev/null; then
    echo "build-web.sh: npm is missing (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
( cd web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error )
MODULES=$REPO/web/node_modules
rm -rf "$OUT.new"
mkdir -p "$OUT.new/xterm" "$OUT.new/novnc"
cp "$MODULES/@xterm/xterm/lib/xterm.mjs" "$MODULES/@xterm/xterm/css/xterm.css" "$OUT.new/xterm/"
cp "$MODULES/@xterm/xterm/LICENSE" "$OUT.new/xterm/LICENSE.txt"
cp "$MODULES/@xterm/addon-fit/lib/addon-fit.mjs" "$OUT.new/xterm/"
cp "$MODULES/@xterm/addon-fit/LICENSE" "$OUT.new/xterm/LICENSE-addon-fit.txt"
cp -r "$MODULES/@novnc/novnc/core" "$MODULES/@novnc/novnc/vendor" "$OUT.new/novnc/"
cp "$MODULES/@novnc/novnc/LICENSE.txt" "$OUT.new/novnc/LICENSE.txt"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
echo "build-web.sh: xterm.js and noVNC copied into $OUT"
