#!/bin/sh
# service-concurrency.sh - 8 quantctl clients at once against one `quantd serve`, each
# uploading the same model (they race for the same files), submitting one of two specs
# (AWQ and RTN), watching and fetching. All must succeed; each spec runs exactly once (the
# others join it or hit the cache) and every client of a spec gets the same bytes. Reports the
# server's peak RSS.
. "$(dirname "$0")/service-lib.sh"

start_server "$tmp/data" || exit 1
rss_idle=$(peak_rss_kib "$server_pid")

rtn_flags="--method rtn --format gptq --bits 4 --group-size 32"
t0=$(now_ms)
i=1
pids=
while [ $i -le 8 ]; do
    if [ $((i % 2)) -eq 1 ]; then flags=$awq_flags; else flags=$rtn_flags; fi
    $QC --json quantize "$model" $flags --label "client $i" -o "$tmp/out$i" \
        >"$tmp/c$i.json" 2>"$tmp/c$i.err" &
    pids="$pids $!"
    i=$((i + 1))
done
bg_pids=$pids
i=1
for p in $pids; do
    wait "$p"
    echo $? >"$tmp/c$i.status"
    i=$((i + 1))
done
bg_pids=
t1=$(now_ms)
rss=$(peak_rss_kib "$server_pid")

queued=0
i=1
while [ $i -le 8 ]; do
    st=$(cat "$tmp/c$i.status")
    out=$(json_get "$tmp/c$i.json" outcome)
    if [ "$st" -ne 0 ] || [ "$(json_get "$tmp/c$i.json" state)" != succeeded ]; then
        bad "client $i: exit $st" "$tmp/c$i.json" "$tmp/c$i.err"
    fi
    [ "$out" = queued ] && queued=$((queued + 1))
    i=$((i + 1))
done
[ $fail -eq 0 ] && ok "8 clients: all uploaded, quantized, fetched and verified ($((t1 - t0)) ms)"
[ $queued -eq 2 ] && ok "two specs, two jobs queued; the other six joined or hit the cache" ||
    bad "jobs queued: $queued, want 2 (one per spec)" "$tmp/c1.json" "$tmp/c2.json"
for i in 3 5 7; do
    same_tree "$tmp/out1" "$tmp/out$i" || bad "client $i's AWQ artifact differs from client 1's"
done
for i in 4 6 8; do
    same_tree "$tmp/out2" "$tmp/out$i" || bad "client $i's RTN artifact differs from client 2's"
done
[ $fail -eq 0 ] && ok "every client of a spec got the same bytes"
# Whoever uploaded a file first sent it; the others found it held, or were refused while it
# was being uploaded and asked again: a refused stream wastes at most the chunks it had in
# flight (a couple of MiB), far below every client sending the whole model (8 copies).
sent=0
for i in 1 2 3 4 5 6 7 8; do
    s=$(sed -n 's/.*"model":{[^}]*"sent_bytes":\([0-9]*\).*/\1/p' "$tmp/c$i.json")
    sent=$((sent + ${s:-0}))
done
say "model bytes sent by the 8 clients together: $sent (the model is 3754471 bytes)"
[ "$sent" -ge 3754471 ] && [ "$sent" -le $((3754471 + 8 * 2097152)) ] &&
    ok "the model crossed the wire about once" ||
    bad "model bytes sent: $sent; want one copy (3754471) plus at most 2 MiB per client"

$QC --json ls >"$tmp/ls.json" 2>&1
n_art=$(grep -o '"manifest_digest"' "$tmp/ls.json" | wc -l)
[ "$n_art" -eq 2 ] && ok "two artifacts in the cache" ||
    bad "artifacts: $n_art, want 2" "$tmp/ls.json"
say "server peak RSS (VmHWM): ${rss} KiB after 8 clients" \
    "(${rss_idle} KiB when it started listening)"
stop_server
exit $fail
