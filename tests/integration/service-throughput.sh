#!/bin/sh
# service-throughput.sh - reports (does not assert) quantctl's upload and download rates on
# loopback against a plain TCP copy of the same bytes. The model is babyllama plus 96 MiB of
# padding, which the artifact carries over unchanged, so both directions move about 100 MiB.
# The rates include what the service adds on top of the socket: gRPC framing, the server's
# sha256 and durable writes on upload; the client's writes, fsync and sha256 on download
# (verification time is reported apart).
. "$(dirname "$0")/service-lib.sh"

big="$tmp/model"
cp -r "$model" "$big"
"$QD_SERVICE_TOOL" gen 100663296 5 >"$big/padding.bin"
start_server "$tmp/data" || exit 1

$QC --json put "$big" >"$tmp/put.json" 2>"$tmp/put.err" || bad "put" "$tmp/put.json" "$tmp/put.err"
digest=$(json_get "$tmp/put.json" digest)
$QC --json quantize --model-digest "$digest" --method rtn --format gptq --bits 4 \
    --group-size 32 --no-fetch >"$tmp/q.json" 2>"$tmp/q.err" ||
    bad "quantize" "$tmp/q.json" "$tmp/q.err"
art=$(json_get "$tmp/q.json" artifact_id)
$QC --json fetch "$art" -o "$tmp/fetched" >"$tmp/fetch.json" 2>"$tmp/fetch.err" ||
    bad "fetch" "$tmp/fetch.json" "$tmp/fetch.err"
cmp -s "$big/padding.bin" "$tmp/fetched/padding.bin" || bad "fetched padding.bin differs"
stop_server

"$QD_SERVICE_TOOL" tcp-copy "$big"/* >"$tmp/tcp-up.out" 2>&1 || bad "tcp-copy" "$tmp/tcp-up.out"
"$QD_SERVICE_TOOL" tcp-copy "$tmp/fetched"/* >"$tmp/tcp-down.out" 2>&1 ||
    bad "tcp-copy" "$tmp/tcp-down.out"
tcp_up=$(sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p' "$tmp/tcp-up.out")
tcp_down=$(sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p' "$tmp/tcp-down.out")
up=$(json_get "$tmp/put.json" mib_per_s)
up_bytes=$(json_get "$tmp/put.json" sent_bytes)
up_s=$(json_get "$tmp/put.json" seconds)
down=$(json_get "$tmp/fetch.json" mib_per_s)
down_bytes=$(json_get "$tmp/fetch.json" received_bytes)
down_s=$(json_get "$tmp/fetch.json" seconds)
verify_s=$(json_get "$tmp/fetch.json" verify_seconds)

awk -v up="$up" -v ub="$up_bytes" -v us="$up_s" -v tu="$tcp_up" \
    -v down="$down" -v db="$down_bytes" -v ds="$down_s" -v td="$tcp_down" -v vs="$verify_s" 'BEGIN {
    pu = 0; pd = 0
    if (tu > 0) pu = 100 * up / tu
    if (td > 0) pd = 100 * down / td
    printf "throughput on loopback (reported, not asserted):\n"
    printf "  upload    %10d bytes  %7.3f s  %8.1f MiB/s  (%.1f%% of raw TCP)\n", ub, us, up, pu
    printf "  download  %10d bytes  %7.3f s  %8.1f MiB/s  (%.1f%% of raw TCP;", db, ds, down, pd
    printf " sha256 check %.3f s more)\n", vs
    printf "  raw TCP   %.1f MiB/s for the upload bytes,", tu
    printf " %.1f MiB/s for the download bytes\n", td
}'
[ -n "$up" ] && [ -n "$down" ] && [ -n "$tcp_up" ] && ok "throughput measured" ||
    bad "throughput not measured"
exit $fail
