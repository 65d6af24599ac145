#!/bin/sh
# Runs the proxy on a copy of the configuration (the last argument) that starts with
# `tlsEngine = ENGINE`: `tools/with_engine.sh deno CONF`, e.g. as the benchmark's CANDIDATE.
set -e
engine=$1
shift
for conf; do :; done
copy="$conf.$engine.conf"
{ echo "tlsEngine = $engine"; cat "$conf"; } >"$copy"
here=$(dirname "$0")
exec "$here/../tools/deno/node_modules/.bin/deno" run -A "$here/../main.ts" "$copy"
