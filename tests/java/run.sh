#!/usr/bin/env bash
# Compile and run the pgjdbc test against a fresh server on a temporary lake.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${TOUCHLAKE_BIN:-$HOME/.cache/touchlake-target/debug/touchlake}"
jar=/usr/share/java/postgresql.jar
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
javac -d "$work/classes" -cp "$jar" "$here/JdbcTest.java"
"$bin" serve --lake "$work/lake" --listen 127.0.0.1:0 > "$work/out" 2>/dev/null &
pid=$!
for _ in $(seq 1 600); do
  addr="$(sed -n 's/^touchlake listening on \([^ ]*\).*/\1/p' "$work/out")"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "server did not start"; exit 1; }
java -cp "$work/classes:$jar" JdbcTest "jdbc:postgresql://$addr/touchlake"
