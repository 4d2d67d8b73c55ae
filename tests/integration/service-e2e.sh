#!/bin/sh
# service-e2e.sh - quantctl against `quantd serve`, end to end: an AWQ job into the AutoAWQ
# format yields the very bytes `quantd quantize` writes locally; the same request again is
# answered from the cache with no job run (its latency is reported), also by model digest and
# by server-side path; the other subcommands; an interrupted download resumes and a corrupted
# file is caught by its sha256; refusals and an absent server give their exit statuses.
. "$(dirname "$0")/service-lib.sh"

# ---- the reference: the same job in process ---------------------------------------------------
"$QUANTD" quantize "$model" $awq_flags --threads 2 -o "$tmp/local" --quiet \
    >"$tmp/local.out" 2>&1 || bad "quantd quantize (the local reference)" "$tmp/local.out"

start_server "$tmp/data" || exit 1

# ---- usage errors need no server: exit 2 before anything is sent ------------------------------
$QC quantize "$model" --method awq --bits 4 >"$tmp/o" 2>&1
[ $? -eq 2 ] && grep -q -- "--format" "$tmp/o" && ok "no --format: exit 2" ||
    bad "no --format" "$tmp/o"
$QC quantize "$model" --method awq --format awq --bits 3 --calib "$calib" >"$tmp/o" 2>&1
[ $? -eq 2 ] && grep -q -- "--bits 3" "$tmp/o" && ok "bad spec: exit 2 with the parser's message" ||
    bad "bad spec" "$tmp/o"

# ---- the job: queued, watched, fetched, byte-identical ----------------------------------------
t0=$(now_ms)
$QC --json quantize "$model" $awq_flags --label e2e -o "$tmp/remote1" \
    >"$tmp/q1.json" 2>"$tmp/q1.err"
st=$?
t1=$(now_ms)
job1=$(json_get "$tmp/q1.json" job_id)
art=$(json_get "$tmp/q1.json" artifact_id)
if [ $st -eq 0 ] && [ "$(json_get "$tmp/q1.json" outcome)" = queued ] &&
    [ "$(json_get "$tmp/q1.json" state)" = succeeded ] && [ -n "$art" ]; then
    ok "quantize: queued, succeeded, artifact $art ($((t1 - t0)) ms)"
else
    bad "quantize (exit $st)" "$tmp/q1.json" "$tmp/q1.err"
fi
n_layers=$(grep -o '"duration_ms"' "$tmp/q1.json" | wc -l)
[ "$n_layers" -eq 5 ] && ok "5 per-layer errors reported" ||
    bad "per-layer errors: $n_layers, want 5" "$tmp/q1.json"
same_tree "$tmp/local" "$tmp/remote1" && ok "artifact byte-identical to quantd quantize" ||
    bad "artifact differs from quantd quantize -o"
[ -e "$tmp/remote1.partial" ] && bad "remote1.partial left behind"

# ---- the same request again: the cache answers, no job runs -----------------------------------
t0=$(now_ms)
$QC quantize "$model" $awq_flags -o "$tmp/remote2" >"$tmp/q2.out" 2>"$tmp/q2.err"
st=$?
t1=$(now_ms)
if [ $st -eq 0 ] && grep -q "cache hit: answered from the cache, no job ran" "$tmp/q2.out" &&
    grep -q "upload: nothing to send" "$tmp/q2.out"; then
    ok "second request: cache hit, nothing uploaded"
else
    bad "second request (exit $st)" "$tmp/q2.out" "$tmp/q2.err"
fi
rpc_ms=$(sed -n 's/.*no job ran; \([0-9.]*\) ms).*/\1/p' "$tmp/q2.out")
say "latency: cache-hit Quantize call ${rpc_ms} ms; the whole command $((t1 - t0)) ms" \
    "(hashing, StatModel, Quantize, fetch and sha256 check)"
same_tree "$tmp/local" "$tmp/remote2" && ok "cache-hit artifact byte-identical" ||
    bad "cache-hit artifact differs"
grep -q "^layer " "$tmp/q2.out" && bad "a cache hit printed layers: a job ran" "$tmp/q2.out"
$QC --json ls jobs >"$tmp/jobs.json"
ran=$(grep -o '"cache_hit":false' "$tmp/jobs.json" | wc -l)
[ "$ran" -eq 1 ] && ok "one job ran for two requests" ||
    bad "jobs that ran: $ran, want 1" "$tmp/jobs.json"

# By the model's digest, and by its path on the server: the same cache key, the same artifact.
digest=$($QC --json put "$model" | sed -n 's/.*"digest":"\([0-9a-f]*\)".*/\1/p')
$QC --json quantize --model-digest "$digest" $awq_flags --no-fetch >"$tmp/q3.json" 2>&1
[ "$(json_get "$tmp/q3.json" outcome)" = cache_hit ] &&
    [ "$(json_get "$tmp/q3.json" artifact_id)" = "$art" ] &&
    ok "--model-digest: cache hit, same artifact" || bad "--model-digest" "$tmp/q3.json"
$QC --json quantize --server-path "$model" $awq_flags --no-fetch >"$tmp/q4.json" 2>&1
[ "$(json_get "$tmp/q4.json" outcome)" = cache_hit ] &&
    [ "$(json_get "$tmp/q4.json" artifact_id)" = "$art" ] &&
    ok "--server-path: cache hit, same artifact" || bad "--server-path" "$tmp/q4.json"

# ---- the small subcommands ----------------------------------------------------------------------
$QC status "$job1" >"$tmp/o" 2>&1 && grep -q "state: *succeeded" "$tmp/o" &&
    grep -q "label: *e2e" "$tmp/o" && ok "status" || bad "status" "$tmp/o"
$QC watch "$job1" >"$tmp/o" 2>&1 && [ "$(grep -c '^layer ' "$tmp/o")" -eq 5 ] &&
    grep -q "succeeded; artifact $art" "$tmp/o" && ok "watch replays a finished job" ||
    bad "watch" "$tmp/o"
$QC ls >"$tmp/o" 2>&1 && grep -q "^$art .*awq" "$tmp/o" && ok "ls lists the artifact" ||
    bad "ls" "$tmp/o"
$QC --json info >"$tmp/o" 2>&1 && grep -q '"engine_version"' "$tmp/o" && ok "info" ||
    bad "info" "$tmp/o"
$QC cancel "$job1" >"$tmp/o" 2>&1
[ $? -eq 3 ] && grep -q "FAILED_PRECONDITION" "$tmp/o" &&
    ok "cancel a finished job: exit 3 with the status" || bad "cancel a finished job" "$tmp/o"
$QC status 0123456789abcdef0123456789abcdef >"$tmp/o" 2>&1
[ $? -eq 3 ] && grep -q "NOT_FOUND" "$tmp/o" && ok "status of an unknown job: exit 3, NOT_FOUND" ||
    bad "unknown job" "$tmp/o"

# ---- --detach, cancel, and watching a cancelled job ----------------------------------------------
$QC --json quantize "$model" $awq_flags --calib-rows 4 --detach >"$tmp/d.json" 2>&1
st=$?
job2=$(json_get "$tmp/d.json" job_id)
[ $st -eq 0 ] && [ -n "$job2" ] && [ "$(json_get "$tmp/d.json" outcome)" = queued ] &&
    ok "--detach: submitted $job2" || bad "--detach (exit $st)" "$tmp/d.json"
$QC cancel "$job2" >"$tmp/o" 2>&1 &&
    grep -q "job $job2: \(cancelled\|.*cancel requested\)" "$tmp/o" &&
    ok "cancel a queued or running job" || bad "cancel" "$tmp/o"
$QC watch "$job2" >"$tmp/o" 2>&1
[ $? -eq 1 ] && grep -q "job $job2: cancelled" "$tmp/o" && ok "watch a cancelled job: exit 1" ||
    bad "watch a cancelled job" "$tmp/o"
$QC status "$job2" >"$tmp/o" 2>&1
[ $? -eq 1 ] && ok "status of a cancelled job: exit 1" || bad "status of a cancelled job" "$tmp/o"

# ---- fetch: interrupted, resumed; a corrupted file is fetched again ----------------------------
# interrupted_fetch DIR FILE BYTES: a slow fetch, killed once FILE holds more than BYTES.
interrupted_fetch() {
    $QC fetch "$art" -o "$1" --limit-rate 128K >"$tmp/slow.out" 2>&1 &
    bg_pids=$!
    i=0
    while [ $i -lt 100 ]; do
        sz=$(stat -c %s "$1.partial/$2" 2>/dev/null || echo 0)
        [ "$sz" -gt "$3" ] && break
        i=$((i + 1))
        sleep 0.1
    done
    kill -9 $bg_pids 2>/dev/null
    wait $bg_pids 2>/dev/null
    bg_pids=
}
interrupted_fetch "$tmp/f1" model.safetensors 100000
if [ -d "$tmp/f1" ] || [ ! -f "$tmp/f1.partial/.quantctl-fetch.json" ]; then
    bad "an interrupted fetch must leave only f1.partial, with its state"
fi
$QC fetch "$art" -o "$tmp/f1" >"$tmp/f1.out" 2>&1
st=$?
if [ $st -eq 0 ] && same_tree "$tmp/local" "$tmp/f1" &&
    grep -q "resuming the download of $art at model.safetensors byte [1-9]" "$tmp/f1.out"; then
    ok "fetch resumed after kill -9 of the client, verified"
else
    bad "fetch resume (exit $st)" "$tmp/f1.out"
fi
# A complete-looking file with wrong bytes: the sha256 check finds it, and it is fetched again.
interrupted_fetch "$tmp/f2" model.safetensors 0
if [ -f "$tmp/f2.partial/LICENSE" ]; then
    sz=$(stat -c %s "$tmp/f2.partial/LICENSE")
    "$QD_SERVICE_TOOL" gen "$sz" 7 >"$tmp/f2.partial/LICENSE"
    $QC fetch "$art" -o "$tmp/f2" >"$tmp/f2.out" 2>&1
    st=$?
    [ $st -eq 0 ] && grep -q "LICENSE: sha256 or size does not match" "$tmp/f2.out" &&
        same_tree "$tmp/local" "$tmp/f2" && ok "a corrupted file is caught and fetched again" ||
        bad "corrupted file (exit $st)" "$tmp/f2.out"
else
    bad "f2.partial/LICENSE missing after the interrupted fetch"
fi
$QC fetch "$art" -o "$tmp/f1" >"$tmp/o" 2>&1
[ $? -eq 2 ] && ok "fetch into an existing directory: exit 2" ||
    bad "fetch into an existing directory" "$tmp/o"

# Bytes gone bad on the server's disk (artifacts/<id>/ in its data directory): the download
# must not verify, and DIR must not appear.
served="$tmp/data/artifacts/$art/LICENSE"
if [ -f "$served" ]; then
    sz=$(stat -c %s "$served")
    chmod u+w "$served" 2>/dev/null
    "$QD_SERVICE_TOOL" gen "$sz" 9 >"$served"
    $QC fetch "$art" -o "$tmp/f4" >"$tmp/f4.out" 2>&1
    st=$?
    if [ ! -e "$tmp/f4" ] && { { [ $st -eq 1 ] && grep -q "do not match" "$tmp/f4.out"; } ||
        { [ $st -eq 3 ] && grep -q "DATA_LOSS" "$tmp/f4.out"; }; }; then
        ok "corrupt bytes on the server: the fetch fails (exit $st) and leaves no f4"
    else
        bad "corrupt bytes on the server (exit $st)" "$tmp/f4.out"
    fi
else
    say "skip the server-side corruption check: no $served"
fi

# ---- rm: gone from listings and downloads -------------------------------------------------------
$QC rm "$art" >"$tmp/o" 2>&1 && ok "rm" || bad "rm" "$tmp/o"
$QC ls >"$tmp/o" 2>&1
grep -q "^$art" "$tmp/o" && bad "ls still lists the deleted artifact" "$tmp/o"
$QC fetch "$art" -o "$tmp/f3" >"$tmp/o" 2>&1
[ $? -eq 3 ] && grep -q "NOT_FOUND" "$tmp/o" &&
    ok "fetch of a deleted artifact: exit 3, NOT_FOUND" ||
    bad "fetch of a deleted artifact" "$tmp/o"

# ---- no server --------------------------------------------------------------------------------
stop_server
$QC --timeout 5 info >"$tmp/o" 2>&1
[ $? -eq 4 ] && grep -q "cannot reach the server at $addr" "$tmp/o" && ok "no server: exit 4" ||
    bad "no server" "$tmp/o"
QUANTD_SERVER=$addr "$QUANTCTL" --timeout 5 ls >"$tmp/o" 2>&1
[ $? -eq 4 ] && grep -q "$addr" "$tmp/o" && ok "QUANTD_SERVER names the server" ||
    bad "QUANTD_SERVER" "$tmp/o"
exit $fail
