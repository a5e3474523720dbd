#!/usr/bin/env bash
# The whole flow on one machine: a receiver (`accio serve`), the spool service
# (`accio watch`), a file dropped into the spool, delivered, and moved to done.
#
# Usage, from the repository root:   cargo build --release && ./demo/run.sh
# ACCIO_BIN=path/to/accio uses another binary. Exits 0 when the file arrived intact and was
# moved to done; otherwise non-zero with the reason and the last lines of both logs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEMO=$ROOT/demo
BIN=${ACCIO_BIN:-$ROOT/target/release/accio}
DEADLINE_S=20

SERVE_PID=""
WATCH_PID=""

say() { printf '%s\n' "$*"; }
fail() {
    say "FAILED: $*" >&2
    for log in "$DEMO/run/serve.log" "$DEMO/run/watch.log"; do
        if [[ -s $log ]]; then
            say "--- last lines of ${log#"$ROOT"/}:" >&2
            tail -n 15 "$log" >&2
        fi
    done
    exit 1
}
stop() {
    # TERM, then wait: both exit 0 on SIGTERM; what they print goes to their logs.
    for pid in $WATCH_PID $SERVE_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $WATCH_PID $SERVE_PID; do
        wait "$pid" 2>/dev/null || true
    done
    WATCH_PID=""
    SERVE_PID=""
}
trap stop EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
alive() { kill -0 "$1" 2>/dev/null; }

# True when something listens on TCP port $1 (IPv4 or IPv6), read from /proc so that no
# test connection reaches the receiver (it would save it as a file).
listening() {
    local want
    want=$(printf ':%04X' "$1")
    awk -v p="$want" 'FNR > 1 && substr($2, length($2) - 4) == p && $4 == "0A" { found = 1 }
        END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo $(( 20000 + RANDOM % 40000 ))
    fi
}

[[ -x $BIN ]] || fail "$BIN not found; run 'cargo build --release' first (or set ACCIO_BIN)"

rm -rf "$DEMO/spool" "$DEMO/done" "$DEMO/failed" "$DEMO/received" "$DEMO/run"
mkdir -p "$DEMO/spool" "$DEMO/done" "$DEMO/failed" "$DEMO/received" "$DEMO/run"

# 1. The receiver, on a free port (another one if it was taken in the meantime).
PORT=""
for _ in 1 2 3 4 5; do
    candidate=$(free_port)
    "$BIN" serve "$candidate" "$DEMO/received" >"$DEMO/run/serve.log" 2>&1 &
    SERVE_PID=$!
    start=$(now_ms)
    while alive "$SERVE_PID" && ! listening "$candidate"; do
        (( $(now_ms) - start < DEADLINE_S * 1000 )) || fail "accio serve did not start listening on port $candidate"
        sleep 0.02
    done
    if alive "$SERVE_PID"; then
        PORT=$candidate
        break
    fi
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
done
[[ -n $PORT ]] || fail "could not start accio serve on a free port"

# 2. The service, with the demo config made concrete.
CONFIG=$DEMO/run/accio.toml
sed -e "s|@DEMO@|$DEMO|g" -e "s|@PORT@|$PORT|g" "$DEMO/accio.toml" >"$CONFIG"
if ! "$BIN" check-config --config "$CONFIG" >"$DEMO/run/effective.toml" 2>"$DEMO/run/check.log"; then
    fail "the demo configuration was refused: $(cat "$DEMO/run/check.log")"
fi
"$BIN" watch --config "$CONFIG" >"$DEMO/run/watch.log" 2>&1 &
WATCH_PID=$!

# 3. Drop a file the documented way: write it under a .part name, then rename it.
NAME=hello-$(date +%H%M%S).txt
PART=$DEMO/spool/.$NAME.part
{
    printf 'Hello from the accio demo.\n'
    printf 'Written at %s on %s.\n' "$(date -u +%FT%TZ)" "$(uname -n)"
    head -c 3000 /dev/urandom | od -An -tx1 | tr -d ' \n' | fold -w 64
    printf '\n'
} >"$PART"
cp "$PART" "$DEMO/run/$NAME.original"
SIZE=$(stat -c %s "$PART")
t0=$(now_ms)
mv "$PART" "$DEMO/spool/$NAME"

# 4. Wait, with a deadline, until it was received intact and moved to done.
RECEIVED=""
while :; do
    alive "$WATCH_PID" || fail "accio watch exited early (see its log below)"
    alive "$SERVE_PID" || fail "accio serve exited early"
    if [[ -z $RECEIVED ]]; then
        for f in "$DEMO/received"/*.file; do
            [[ -e $f ]] || continue
            if cmp -s "$f" "$DEMO/run/$NAME.original"; then
                RECEIVED=$f
                t_recv=$(now_ms)
            fi
        done
    fi
    if [[ -n $RECEIVED && -e $DEMO/done/$NAME && ! -e $DEMO/spool/$NAME ]]; then
        t_done=$(now_ms)
        break
    fi
    if (( $(now_ms) - t0 > DEADLINE_S * 1000 )); then
        [[ -n $RECEIVED ]] || fail "the file did not arrive in demo/received within ${DEADLINE_S}s"
        fail "the file arrived but was not moved to demo/done within ${DEADLINE_S}s"
    fi
    sleep 0.01
done
cmp -s "$DEMO/done/$NAME" "$DEMO/run/$NAME.original" || fail "demo/done/$NAME differs from what was dropped"

ms() { printf '%d.%03d s' $(( $1 / 1000 )) $(( $1 % 1000 )); }
say "accio demo"
say "  receiver  accio serve $PORT demo/received            (log: demo/run/serve.log)"
say "  service   accio watch --config demo/run/accio.toml  (log: demo/run/watch.log)"
say "  dropped   demo/spool/$NAME, $SIZE bytes, written as .$NAME.part then renamed"
say "  received  ${RECEIVED#"$ROOT"/}, identical, $(ms $(( t_recv - t0 ))) after the rename"
say "  moved     demo/done/$NAME, $(ms $(( t_done - t0 ))) after the rename"
stop
say "OK: delivered and moved to done; both processes stopped."
