#!/bin/sh
# metrics.sh - the Prometheus endpoint of `quantd serve` reflects a job run. The daemon runs
# with metrics.listen 127.0.0.1:0; the test scrapes /metrics, runs an RTN job on babyllama with
# quantctl (upload, job, fetch), scrapes again and compares: one more succeeded job, one more
# rtn duration, one more cache miss, received bytes up by at least the model's size, sent bytes
# up by exactly the fetched files' total, the worker busier. The same request again is one
# more cache hit and no new job. Other paths are 404, other methods 405, and after SIGTERM
# nothing listens. A config with metrics.listen beyond loopback and no metrics.allow_remote is
# refused with a message naming the key.
. "$(dirname "$0")/service-lib.sh"

if ! command -v curl >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then
    echo "skip: neither curl nor python3 to scrape with"
    exit 77
fi

cat >>"$tmp/quantd.yaml" <<EOF
metrics:
  listen: "127.0.0.1:0"
EOF

# http METHOD URL OUT: the body into OUT, the header lines into OUT.h; prints the status (000
# when nothing answered).
http() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -m 10 -X "$1" -o "$3" -D "$3.h" -w '%{http_code}' "$2"
        return 0
    fi
    python3 - "$@" <<'EOF'
import sys, urllib.request, urllib.error
method, url, out = sys.argv[1:4]
code, body, headers = "000", b"", ""
try:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
        code, body, headers = str(r.status), r.read(), str(r.headers)
except urllib.error.HTTPError as e:
    code, body, headers = str(e.code), e.read(), str(e.headers)
except OSError:
    pass
open(out, "wb").write(body)
open(out + ".h", "w").write(headers)
print(code, end="")
EOF
}

# scrape OUT: GET /metrics into OUT, which must be a 200 with the exposition Content-Type.
scrape() {
    st=$(http GET "$metrics_url" "$1")
    if [ "$st" != 200 ]; then
        bad "scrape $1: HTTP status $st" "$1"
        return 1
    fi
    tr -d '\r' <"$1.h" | grep -qi '^content-type: text/plain; version=0.0.4; charset=utf-8$' ||
        bad "scrape $1: Content-Type" "$1.h"
}

# metric FILE SAMPLE: the value of the sample line 'SAMPLE VALUE' (name and labels exactly as
# written), or "none".
metric() { awk -v n="$2" '$1 == n { print $2; f = 1; exit } END { if (!f) print "none" }' "$1"; }

# grew_by BEFORE AFTER SAMPLE WANT: AFTER's value is BEFORE's plus exactly WANT.
grew_by() {
    a=$(metric "$1" "$3")
    b=$(metric "$2" "$3")
    if [ "$a" != none ] && [ "$b" != none ] && [ $((b - a)) -eq "$4" ]; then
        ok "$3: $a -> $b (+$4)"
    else
        bad "$3: $a -> $b, want +$4"
    fi
}

# tree_bytes DIR: the total size of the files under DIR.
tree_bytes() { find "$1" -type f -exec stat -c %s {} + | awk '{ s += $1 } END { print s + 0 }'; }

start_server "$tmp/data" || exit 1
metrics_url=$(sed -n 's|^quantd: metrics on \(http://127\.0\.0\.1:[0-9][0-9]*/metrics\)$|\1|p' \
    "$log" | head -n 1)
if [ -z "$metrics_url" ]; then
    bad "no 'quantd: metrics on http://127.0.0.1:PORT/metrics' line" "$log"
    exit 1
fi
ok "metrics on $metrics_url"

# ---- before -------------------------------------------------------------------------------------
scrape "$tmp/m0" || exit 1
[ "$(metric "$tmp/m0" quantd_up)" = 1 ] &&
    grep -q '^# TYPE quantd_job_duration_seconds histogram$' "$tmp/m0" &&
    ok "first scrape: quantd_up 1, HELP/TYPE lines" || bad "first scrape" "$tmp/m0"

# ---- one RTN job: upload, run, fetch ------------------------------------------------------------
rtn_flags="--method rtn --format gptq --bits 4 --group-size 32"
$QC --json quantize "$model" $rtn_flags -o "$tmp/rtn1" >"$tmp/q1.json" 2>"$tmp/q1.err"
st=$?
if [ $st -eq 0 ] && [ "$(json_get "$tmp/q1.json" outcome)" = queued ] &&
    [ "$(json_get "$tmp/q1.json" state)" = succeeded ]; then
    ok "RTN job queued, succeeded, fetched"
else
    bad "quantize (exit $st)" "$tmp/q1.json" "$tmp/q1.err"
fi
scrape "$tmp/m1" || exit 1

grew_by "$tmp/m0" "$tmp/m1" 'quantd_jobs_finished_total{state="succeeded"}' 1
grew_by "$tmp/m0" "$tmp/m1" 'quantd_jobs_finished_total{state="failed"}' 0
grew_by "$tmp/m0" "$tmp/m1" 'quantd_job_duration_seconds_count{method="rtn"}' 1
grew_by "$tmp/m0" "$tmp/m1" 'quantd_job_duration_seconds_bucket{method="rtn",le="+Inf"}' 1
grew_by "$tmp/m0" "$tmp/m1" 'quantd_job_duration_seconds_count{method="awq"}' 0
grew_by "$tmp/m0" "$tmp/m1" 'quantd_cache_requests_total{result="miss"}' 1
grew_by "$tmp/m0" "$tmp/m1" 'quantd_cache_requests_total{result="hit"}' 0
[ "$(metric "$tmp/m1" 'quantd_jobs{state="queued"}')" = 0 ] &&
    [ "$(metric "$tmp/m1" 'quantd_jobs{state="running"}')" = 0 ] &&
    ok "no job queued or running after it" || bad "quantd_jobs after the job" "$tmp/m1"

# Received: at least the model's files (a fresh data directory holds none of them).
model_bytes=$(tree_bytes "$model")
in0=$(metric "$tmp/m0" quantd_received_bytes_total)
in1=$(metric "$tmp/m1" quantd_received_bytes_total)
[ "$in1" != none ] && [ $((in1 - in0)) -ge "$model_bytes" ] &&
    ok "received bytes +$((in1 - in0)) >= the model's $model_bytes" ||
    bad "received bytes $in0 -> $in1, want at least +$model_bytes"
blob=$(metric "$tmp/m1" quantd_blob_bytes)
[ "$blob" != none ] && [ "$blob" -ge "$model_bytes" ] && ok "blob bytes $blob" ||
    bad "quantd_blob_bytes $blob, want >= $model_bytes"

# Sent: exactly the fetched artifact.
art_bytes=$(tree_bytes "$tmp/rtn1")
[ "$art_bytes" -gt 0 ] || bad "the fetched artifact is empty"
grew_by "$tmp/m0" "$tmp/m1" quantd_sent_bytes_total "$art_bytes"
[ "$(metric "$tmp/m1" quantd_cache_artifacts)" = 1 ] && ok "one artifact cached" ||
    bad "quantd_cache_artifacts" "$tmp/m1"
cache=$(metric "$tmp/m1" quantd_cache_bytes)
[ "$cache" = "$art_bytes" ] && ok "cache bytes = the artifact's $art_bytes" ||
    bad "quantd_cache_bytes $cache, want $art_bytes"

# The worker ran the job: its busy time grew, and the duration's sum is positive.
w='quantd_worker_busy_seconds_total{worker="cpu0"}'
b0=$(metric "$tmp/m0" "$w")
b1=$(metric "$tmp/m1" "$w")
awk -v a="$b0" -v b="$b1" 'BEGIN { exit !(a != "none" && b + 0 > a + 0) }' &&
    ok "$w: $b0 -> $b1" || bad "$w: $b0 -> $b1, want it to grow"
s1=$(metric "$tmp/m1" 'quantd_job_duration_seconds_sum{method="rtn"}')
awk -v s="$s1" 'BEGIN { exit !(s + 0 > 0) }' && ok "rtn duration sum $s1 s" ||
    bad "rtn duration sum $s1"

# ---- the same request again: a cache hit, no job ------------------------------------------------
$QC --json quantize "$model" $rtn_flags -o "$tmp/rtn2" >"$tmp/q2.json" 2>"$tmp/q2.err"
st=$?
[ $st -eq 0 ] && [ "$(json_get "$tmp/q2.json" outcome)" = cache_hit ] &&
    ok "second request: cache hit" || bad "second request (exit $st)" "$tmp/q2.json" "$tmp/q2.err"
scrape "$tmp/m2" || exit 1
grew_by "$tmp/m1" "$tmp/m2" 'quantd_cache_requests_total{result="hit"}' 1
grew_by "$tmp/m1" "$tmp/m2" 'quantd_cache_requests_total{result="miss"}' 0
grew_by "$tmp/m1" "$tmp/m2" 'quantd_jobs_finished_total{state="succeeded"}' 0
grew_by "$tmp/m1" "$tmp/m2" 'quantd_job_duration_seconds_count{method="rtn"}' 0
grew_by "$tmp/m1" "$tmp/m2" quantd_received_bytes_total 0
grew_by "$tmp/m1" "$tmp/m2" quantd_sent_bytes_total "$(tree_bytes "$tmp/rtn2")"

# ---- what the endpoint refuses ------------------------------------------------------------------
st=$(http GET "${metrics_url%/metrics}/nope" "$tmp/nope")
[ "$st" = 404 ] && ok "GET /nope: 404" || bad "GET /nope: $st" "$tmp/nope"
st=$(http POST "$metrics_url" "$tmp/post")
[ "$st" = 405 ] && tr -d '\r' <"$tmp/post.h" | grep -qi '^allow: GET, HEAD$' &&
    ok "POST /metrics: 405, Allow: GET, HEAD" || bad "POST /metrics: $st" "$tmp/post.h"

# ---- gone with the daemon -----------------------------------------------------------------------
stop_server
st=$(http GET "$metrics_url" "$tmp/after")
[ "$st" = 000 ] && ok "after SIGTERM nothing answers" || bad "after SIGTERM: HTTP $st"

# ---- beyond loopback only when allowed ----------------------------------------------------------
cat >"$tmp/remote.yaml" <<EOF
metrics:
  listen: "0.0.0.0:9100"
EOF
timeout 30 "$QUANTD" serve --config "$tmp/remote.yaml" --listen 127.0.0.1:0 \
    --data-dir "$tmp/data2" >"$tmp/remote.out" 2>&1
st=$?
[ $st -eq 2 ] && grep -q "remote.yaml:2: metrics.listen: '0.0.0.0:9100' is not a loopback" \
    "$tmp/remote.out" && grep -q "metrics.allow_remote: true" "$tmp/remote.out" &&
    ok "metrics.listen 0.0.0.0:9100 without metrics.allow_remote: refused (exit 2)" ||
    bad "0.0.0.0:9100 without the allow key (exit $st)" "$tmp/remote.out"
printf '  allow_remote: true\n' >>"$tmp/remote.yaml"
"$QUANTD" config check "$tmp/remote.yaml" >"$tmp/check.out" 2>&1 &&
    ok "with metrics.allow_remote: true the config passes" ||
    bad "0.0.0.0:9100 with the allow key" "$tmp/check.out"
exit $fail
