#!/bin/sh
# service-recovery.sh - `quantd serve` killed with SIGKILL, then started again on the same
# data directory:
#   - during an upload: the server keeps what it had made durable, the upload resumes from the
#     server's offset (> 0, and not below what the server reported before the kill), and the
#     blob in the store is the file, byte for byte;
#   - during a job: after the restart the job runs again to success, or fails with a reason;
#     no partial artifact is ever listed or served (every listed artifact downloads and
#     verifies), and the interrupted job's staging is gone;
#   - the database passes PRAGMA integrity_check after each kill (when sqlite3 is installed).
# The client that was connected sees exit status 4 (connection lost).
. "$(dirname "$0")/service-lib.sh"

data="$tmp/data"
check_db() { # check_db WHEN
    r=$(integrity "$data/quantd.db")
    case $r in
    ok) ok "integrity_check $1: ok" ;;
    skipped) say "skip integrity_check $1: no sqlite3 program" ;;
    *) bad "integrity_check $1: $r" ;;
    esac
}

# ---- kill -9 during an upload -----------------------------------------------------------------
big="$tmp/big"
cp -r "$model" "$big"
"$QD_SERVICE_TOOL" gen 50331648 11 >"$big/padding.bin" # 48 MiB, after model.safetensors
small_bytes=$(cat "$model"/* | wc -c)
start_server "$data" || exit 1
$QC put "$big" --limit-rate 12M >"$tmp/put1.out" 2>&1 &
put_pid=$!
bg_pids=$put_pid
# Wait until the server holds a good part of padding.bin (what it says it holds is durable).
held=0
i=0
while [ $i -lt 100 ]; do
    $QC --json put "$big" --dry-run >"$tmp/dry.json" 2>/dev/null
    held=$(json_get "$tmp/dry.json" held_before)
    [ "${held:-0}" -gt $((small_bytes + 8388608)) ] && break
    i=$((i + 1))
    sleep 0.2
done
kill9_server
wait "$put_pid"
st=$?
bg_pids=
[ $st -eq 4 ] && ok "upload client: exit 4 when the server died" ||
    bad "upload client: exit $st, want 4" "$tmp/put1.out"
[ "${held:-0}" -gt $((small_bytes + 8388608)) ] ||
    bad "the server never reported 8 MiB of padding.bin held ($held)"
check_db "after kill -9 during an upload"

start_server "$data" || exit 1
$QC --json put "$big" >"$tmp/put2.json" 2>"$tmp/put2.err"
st=$?
before=$(json_get "$tmp/put2.json" held_before)
sent=$(json_get "$tmp/put2.json" sent_bytes)
total=$(json_get "$tmp/put2.json" total_bytes)
offset=$(sed -n 's/^quantctl: resuming padding\.bin at byte \([0-9]*\) of .*/\1/p' "$tmp/put2.err")
say "upload killed with ${held} bytes held; after the restart the server held ${before}," \
    "padding.bin resumed at byte ${offset:-?}"
if [ $st -eq 0 ] && [ "${offset:-0}" -gt 0 ] && [ "${before:-0}" -ge "$held" ] &&
    [ "$sent" -eq $((total - before)) ]; then
    ok "upload resumed from the server's offset and sent only the rest"
else
    bad "resume (exit $st)" "$tmp/put2.json" "$tmp/put2.err"
fi
$QC --json put "$big" --dry-run >"$tmp/dry.json" 2>&1
[ "$(json_get "$tmp/dry.json" already_complete)" = true ] && ok "the bundle is complete" ||
    bad "bundle not complete after the resumed upload" "$tmp/dry.json"
# The blob store is content addressed (blobs/sha256/ab/cdef...): the blob is the file itself.
sha=$(sha256sum "$big/padding.bin" | cut -c1-64)
blob=$(find "$data/blobs" -type f -name "*$(echo "$sha" | cut -c3-64)*" | head -n 1)
if [ -n "$blob" ]; then
    cmp -s "$blob" "$big/padding.bin" && ok "the stored blob is padding.bin, byte for byte" ||
        bad "the stored blob differs from padding.bin"
else
    bad "no blob named by padding.bin's sha256 under $data/blobs"
fi

# ---- kill -9 during a job -----------------------------------------------------------------------
$QC quantize "$model" $awq_flags -o "$tmp/job-out" >"$tmp/q1.out" 2>&1 &
q_pid=$!
bg_pids=$q_pid
job=
state=
i=0
while [ $i -lt 150 ]; do
    [ -z "$job" ] && job=$(sed -n 's/^job: \([0-9a-zA-Z_-]*\) (queued.*/\1/p' "$tmp/q1.out")
    if [ -n "$job" ]; then
        $QC --json status "$job" >"$tmp/st.json" 2>/dev/null
        state=$(json_get "$tmp/st.json" state)
        [ "$state" = JOB_STATE_RUNNING ] && grep -q '"layer":[1-9]' "$tmp/st.json" && break
    fi
    i=$((i + 1))
    sleep 0.1
done
kill9_server
wait "$q_pid"
st=$?
bg_pids=
[ -n "$job" ] && [ "$state" = JOB_STATE_RUNNING ] && ok "job $job killed while running" ||
    bad "the job never ran (state '$state')" "$tmp/q1.out"
[ $st -eq 4 ] && ok "watching client: exit 4 when the server died" ||
    bad "watching client: exit $st, want 4" "$tmp/q1.out"
[ -e "$tmp/job-out" ] && bad "the killed client left an output directory"
check_db "after kill -9 during a job"

start_server "$data" || exit 1
$QC watch "$job" >"$tmp/w.out" 2>&1
st=$?
$QC --json status "$job" >"$tmp/st.json" 2>&1
state=$(json_get "$tmp/st.json" state)
if [ $st -eq 0 ] && [ "$state" = JOB_STATE_SUCCEEDED ]; then
    ok "after the restart the job ran again and succeeded"
elif [ $st -eq 1 ] && [ "$state" = JOB_STATE_FAILED ] &&
    grep -q '"message":"[^"]' "$tmp/st.json"; then
    why=$(sed -n 's/.*"message":"\([^"]*\)".*/\1/p' "$tmp/st.json")
    ok "after the restart the job failed with a reason: $why"
else
    bad "job after restart: watch exit $st, state '$state'" "$tmp/w.out" "$tmp/st.json"
fi
# Everything listed is whole: it downloads and every sha256 matches.
$QC --json ls >"$tmp/ls.json" 2>&1
n=0
ids=$(grep -o '"id":"[^"]*","model_digest"' "$tmp/ls.json" | sed 's/"id":"\([^"]*\)".*/\1/')
for a in $ids; do
    n=$((n + 1))
    $QC fetch "$a" -o "$tmp/art-$n" >"$tmp/f.out" 2>&1 ||
        bad "listed artifact $a does not fetch and verify" "$tmp/f.out"
done
[ $n -ge 1 ] || [ "$state" = JOB_STATE_FAILED ] ||
    bad "no artifact listed after the job succeeded" "$tmp/ls.json"
[ $fail -eq 0 ] && ok "every listed artifact ($n) downloads and verifies"
left=$(find "$data/staging" -mindepth 1 -maxdepth 1 ! -name uploads 2>/dev/null | head -n 3)
[ -z "$left" ] && ok "no staging left from the killed job" ||
    bad "staging left after the restart: $left"
stop_server
check_db "after a clean stop"
exit $fail
