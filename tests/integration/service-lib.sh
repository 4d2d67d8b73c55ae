# service-lib.sh - sourced by the service-*.sh tests: a temporary directory, `quantd serve` on
# 127.0.0.1 with a port the kernel picks and its own data directory, and small checks.
#
# Environment (set by ctest): QUANTD and QUANTCTL (the binaries), QD_SOURCE_DIR (the
# repository), QD_SERVICE_TOOL (tests/integration/service-tool.c).
#
# After start_server, $addr is the server's address, $server_pid its process and $QC the
# quantctl command line that talks to it. Everything started is killed and the temporary
# directory removed when the script exits, however it exits.
set -u
fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/quantd-service.XXXXXX") || exit 1
server_pid=
server_n=0
addr=
QC=
bg_pids=

cleanup() {
    for p in $server_pid $bg_pids; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

model="$QD_SOURCE_DIR/examples/models/babyllama"
calib="$QD_SOURCE_DIR/examples/data/babyllama/calib.safetensors"
# The job every test runs: small, so it takes seconds.
awq_flags="--method awq --format awq --bits 4 --group-size 32 --calib $calib --calib-rows 8"

# Two threads per job on the server, as `quantd quantize --threads 2` on the command line;
# the example models readable by server-side path.
cat >"$tmp/quantd.yaml" <<EOF
workers:
  cpu: 1
  threads: 2
model_roots:
  - "$QD_SOURCE_DIR/examples/models"
shutdown:
  drain_seconds: 5
EOF

say() { echo "$@"; }
ok() { echo "ok   $1"; }
bad() {
    echo "FAIL $1"
    shift
    for f in "$@"; do [ -f "$f" ] && sed 's/^/    /' "$f"; done
    fail=1
}

# start_server DATA_DIR: quantd serve until it says where it listens (30 s at most).
start_server() {
    server_n=$((server_n + 1))
    log="$tmp/server-$server_n.log"
    : >"$log" # made here: the background shell may open it after the loop's first look
    "$QUANTD" serve --config "$tmp/quantd.yaml" --listen 127.0.0.1:0 --data-dir "$1" \
        >"$log" 2>&1 &
    server_pid=$!
    i=0
    addr=
    while [ -z "$addr" ]; do
        addr=$(sed -n 's/^quantd: listening on \(127\.0\.0\.1:[0-9][0-9]*\)$/\1/p' "$log" |
            head -n 1)
        [ -n "$addr" ] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            bad "quantd serve exited before listening" "$log"
            server_pid=
            return 1
        fi
        i=$((i + 1))
        if [ $i -gt 300 ]; then
            bad "quantd serve did not listen within 30 s" "$log"
            return 1
        fi
        sleep 0.1
    done
    QC="$QUANTCTL --server $addr"
}

# stop_server: SIGTERM, then wait for a clean exit (status 0).
stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid"
    wait "$server_pid"
    st=$?
    [ $st -eq 0 ] || bad "quantd serve exited with $st after SIGTERM" "$log"
    server_pid=
}

# kill9_server: the crash.
kill9_server() {
    [ -n "$server_pid" ] || return 0
    kill -9 "$server_pid"
    wait "$server_pid" 2>/dev/null
    server_pid=
}

# peak_rss_kib PID: the process's peak resident set (VmHWM), in KiB.
peak_rss_kib() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB$/\1/p' "/proc/$1/status" 2>/dev/null; }

# json_get FILE KEY: the value of a top-level "KEY" of a one-line JSON object (strings, numbers,
# booleans), enough for quantctl's --json output without a JSON tool.
json_get() {
    sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[-0-9.eE+][-0-9.eE+]*\|true\|false\).*/\1/p" "$1" |
        head -n 1 | tr -d '"'
}

# same_tree A B: every file of A is in B with the same bytes, and the other way round.
same_tree() {
    (cd "$1" && find . -type f | LC_ALL=C sort) >"$tmp/tree-a"
    (cd "$2" && find . -type f | LC_ALL=C sort) >"$tmp/tree-b"
    cmp -s "$tmp/tree-a" "$tmp/tree-b" || return 1
    while read -r f; do cmp -s "$1/$f" "$2/$f" || return 1; done <"$tmp/tree-a"
    return 0
}

# integrity DB: "ok", "skipped" (no sqlite3 program) or the check's complaint.
integrity() {
    if ! command -v sqlite3 >/dev/null 2>&1; then
        echo skipped
        return
    fi
    sqlite3 "$1" "PRAGMA integrity_check;" 2>&1 | tr '\n' ' ' | sed 's/ $//'
}

now_ms() { date +%s%3N; }
