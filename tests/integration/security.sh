#!/bin/sh
# security.sh - transport security and authentication of `quantd serve`, end to end with
# quantctl: TLS and mutual TLS with certificates made here by the openssl program (a test CA,
# a server certificate for 127.0.0.1/localhost, a client certificate, and a foreign CA with
# its own client certificate), bearer tokens and their roles, server-side model paths outside
# the model roots, the refusal of plaintext on a network address, owners (one token cannot
# see or fetch another's jobs and artifacts; an admin sees all), and SIGHUPs that swap the
# token file and the certificate (keeping the old ones when the new ones are invalid). The
# daemon must keep serving through every refusal. Skipped (77) without the openssl program.
. "$QD_SOURCE_DIR/tests/integration/service-lib.sh"

command -v openssl >/dev/null 2>&1 || { echo "skip: no openssl program"; exit 77; }
command -v sha256sum >/dev/null 2>&1 || { echo "skip: no sha256sum program"; exit 77; }

# ---- certificates -----------------------------------------------------------------------------
pki="$tmp/pki"
mkdir -p "$pki"
serial=1000

# new_ca NAME: NAME.pem and NAME.key, a self-signed CA.
new_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=quantd test $1" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$pki/$1.key" -out "$pki/$1.pem" >"$pki/log" 2>&1
}

# new_leaf NAME CA USAGE [SAN]: NAME.pem and NAME.key signed by CA, for serverAuth/clientAuth.
new_leaf() {
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [ -n "${4:-}" ] && echo "subjectAltName=$4"
    } >"$pki/$1.ext"
    serial=$((serial + 1))
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$pki/$1.key" -out "$pki/$1.csr" >>"$pki/log" 2>&1 &&
        openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$2.pem" -CAkey "$pki/$2.key" \
            -set_serial "$serial" -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.pem" \
            >>"$pki/log" 2>&1
}

if new_ca ca && new_ca foreign &&
    new_leaf server ca serverAuth "IP:127.0.0.1,DNS:localhost" &&
    new_leaf client ca clientAuth && new_leaf intruder foreign clientAuth &&
    new_leaf stranger foreign serverAuth "IP:127.0.0.1,DNS:localhost"; then
    ok "openssl: test CA, server and client certificates, foreign CA"
else
    bad "openssl could not make the test certificates" "$pki/log"
    exit 1
fi

# ---- tokens: stored as sha256, never as themselves --------------------------------------------
hash_of() { printf %s "$1" | sha256sum | cut -d ' ' -f 1; }
t_read="read-token-$$-a1"
t_submit="submit-token-$$-b2"
t_admin="admin-token-$$-c3"
t_later="later-token-$$-d4"
t_alice="alice-token-$$-e5"
t_bob="bob-token-$$-f6"
t_carol="carol-token-$$-g7"
printf '# quantd tokens\n\nadmin:%s:ops\n' "$(hash_of "$t_admin")" >"$tmp/tokens"

# Model roots: the examples, and a root of our own holding a link that leads out of it.
mkdir -p "$tmp/root" "$tmp/outside/model"
cp "$model"/* "$tmp/outside/model/"
ln -s "$tmp/outside/model" "$tmp/root/escape"

write_config() { # write_config EXTRA_YAML: the service-lib settings plus EXTRA_YAML
    cat >"$tmp/quantd.yaml" <<EOF
workers: {cpu: 1, threads: 2}
model_roots: ["$QD_SOURCE_DIR/examples/models", "$tmp/root"]
shutdown: {drain_seconds: 5}
$1
EOF
}

# ---- plaintext on a network address is refused at start ---------------------------------------
write_config ""
"$QUANTD" serve --config "$tmp/quantd.yaml" --listen 0.0.0.0:0 --data-dir "$tmp/d0" \
    >"$tmp/o" 2>&1
st=$?
[ $st -eq 2 ] && grep -q "'0.0.0.0:0' is neither loopback nor a unix socket" "$tmp/o" &&
    grep -q "allow_insecure_remote" "$tmp/o" &&
    ok "plaintext 0.0.0.0:0 refused at start, naming the address" ||
    bad "plaintext 0.0.0.0:0: exit $st, want 2 and a message naming it" "$tmp/o"

# A key that is not the certificate's: refused at start, naming the file.
write_config "tls: {cert: $pki/server.pem, key: $pki/client.key}"
"$QUANTD" serve --config "$tmp/quantd.yaml" --listen 127.0.0.1:0 --data-dir "$tmp/d0" \
    >"$tmp/o" 2>&1
st=$?
[ $st -ne 0 ] && grep -q "tls.key: .*client.key does not match" "$tmp/o" &&
    ok "a key that does not match the certificate is refused at start" ||
    bad "mismatched key: exit $st" "$tmp/o"

# ---- server 1: TLS (no client certificates), tokens -------------------------------------------
write_config "tls: {cert: $pki/server.pem, key: $pki/server.key}
auth:
  tokens: [\"read:$(hash_of "$t_read"):reader\", \"submit:$(hash_of "$t_submit")\",
           \"submit:$(hash_of "$t_alice"):alice\", \"submit:$(hash_of "$t_bob"):bob\",
           \"read:$(hash_of "$t_carol"):carol\"]
  token_file: $tmp/tokens"
start_server "$tmp/d1" || exit 1
TLS="--tls-ca $pki/ca.pem"

# expect NAME EXIT STATUS_WORD CMD...: run CMD, want exit status EXIT and, for a refusal,
# the gRPC status word on stderr.
expect() {
    name=$1 want=$2 word=$3
    shift 3
    "$@" >"$tmp/o" 2>&1
    got=$?
    if [ $got -eq "$want" ] && { [ -z "$word" ] || grep -q "$word" "$tmp/o"; }; then
        ok "$name"
    else
        echo "    (exit $got, want $want${word:+ and $word})"
        bad "$name" "$tmp/o"
    fi
}

expect "TLS: health with the right CA" 0 SERVING $QC $TLS health
expect "TLS: a plaintext client cannot connect" 4 "" $QC health
expect "TLS: a client trusting a foreign CA cannot connect" 4 "" \
    $QC --tls-ca "$pki/foreign.pem" health
expect "TLS: the server name is checked (localhost)" 0 SERVING \
    $QC $TLS --tls-server-name localhost health
expect "TLS: a wrong server name is refused" 4 "" \
    $QC $TLS --tls-server-name other.example health

expect "auth: no token -> UNAUTHENTICATED" 3 UNAUTHENTICATED $QC $TLS info
expect "auth: wrong token -> UNAUTHENTICATED" 3 UNAUTHENTICATED \
    $QC $TLS --token "not-$t_read" info
grep -q "not-$t_read" "$tmp/o" "$log" && bad "a presented token was echoed" "$tmp/o"
expect "auth: a hash as token -> UNAUTHENTICATED" 3 UNAUTHENTICATED \
    $QC $TLS --token "$(hash_of "$t_read")" info
expect "auth: read token reads" 0 "" $QC $TLS --token "$t_read" ls
QUANTD_TOKEN=$t_read expect "auth: \$QUANTD_TOKEN" 0 "" $QC $TLS info
printf '%s\n' "$t_read" >"$tmp/read.token"
expect "auth: --token-file" 0 "" $QC $TLS --token-file "$tmp/read.token" ls jobs

rtn="--method rtn --format awq --bits 4 --group-size 32 --no-fetch"
expect "auth: read token quantize -> PERMISSION_DENIED" 3 PERMISSION_DENIED \
    $QC $TLS --token "$t_read" quantize --server-path "$model" $rtn
grep -q "Quantize needs the submit role" "$tmp/o" || bad "the refusal names role and RPC" "$tmp/o"
expect "auth: read token upload (PutModel) -> PERMISSION_DENIED" 3 PERMISSION_DENIED \
    $QC $TLS --token "$t_read" put "$model"

$QC $TLS --token "$t_submit" --json quantize --server-path "$model" $rtn \
    >"$tmp/q.json" 2>"$tmp/q.err"
st=$?
art=$(json_get "$tmp/q.json" artifact_id)
[ $st -eq 0 ] && [ -n "$art" ] && ok "auth: submit token quantizes (artifact $art)" ||
    bad "auth: submit token quantize: exit $st" "$tmp/q.json" "$tmp/q.err"
expect "auth: submit token rm -> PERMISSION_DENIED" 3 PERMISSION_DENIED \
    $QC $TLS --token "$t_submit" rm "${art:-none}"
grep -q "DeleteArtifact needs the admin role" "$tmp/o" || bad "rm refusal names admin" "$tmp/o"
expect "auth: admin token (token file) rm" 0 deleted $QC $TLS --token "$t_admin" rm "${art:-none}"

# ---- server-side paths outside the roots --------------------------------------------------------
expect "paths: a directory outside the roots -> PERMISSION_DENIED" 3 PERMISSION_DENIED \
    $QC $TLS --token "$t_submit" quantize --server-path "$tmp/outside/model" $rtn
expect "paths: ROOT/../outside -> PERMISSION_DENIED" 3 PERMISSION_DENIED \
    $QC $TLS --token "$t_submit" quantize --server-path "$tmp/root/../outside/model" $rtn
expect "paths: a link in a root leading out -> PERMISSION_DENIED" 3 PERMISSION_DENIED \
    $QC $TLS --token "$t_submit" quantize --server-path "$tmp/root/escape" $rtn

# ---- owners: each token sees its own jobs and artifacts, an admin sees all -----------------------
rtn16="--method rtn --format awq --bits 4 --group-size 16 --no-fetch"
$QC $TLS --token "$t_alice" --json quantize --server-path "$model" $rtn16 \
    >"$tmp/qa.json" 2>"$tmp/qa.err"
st=$?
art_a=$(json_get "$tmp/qa.json" artifact_id)
job_a=$(json_get "$tmp/qa.json" job_id)
[ $st -eq 0 ] && [ -n "$art_a" ] && [ -n "$job_a" ] &&
    ok "owners: alice quantizes (job $job_a, artifact $art_a)" ||
    bad "owners: alice quantize: exit $st" "$tmp/qa.json" "$tmp/qa.err"
grep -q "job $job_a: queued (.*owner alice)" "$log" &&
    ok "owners: the queued line names the owner" || bad "owners: no owner on the queued line" "$log"
expect "owners: alice sees her job" 0 "" $QC $TLS --token "$t_alice" status "${job_a:-none}"
expect "owners: bob GetJob on alice's job -> NOT_FOUND" 3 NOT_FOUND \
    $QC $TLS --token "$t_bob" status "${job_a:-none}"
grep -q "job ${job_a:-none}: not found" "$tmp/o" ||
    bad "owners: bob's refusal reads as a missing job" "$tmp/o"
expect "owners: bob CancelJob on alice's job -> NOT_FOUND" 3 NOT_FOUND \
    $QC $TLS --token "$t_bob" cancel "${job_a:-none}"
expect "owners: bob GetArtifact on alice's artifact -> NOT_FOUND" 3 NOT_FOUND \
    $QC $TLS --token "$t_bob" fetch "${art_a:-none}" -o "$tmp/bob-fetch"
grep -q "artifact ${art_a:-none}: not found" "$tmp/o" ||
    bad "owners: bob's fetch refusal reads as a missing artifact" "$tmp/o"
[ -e "$tmp/bob-fetch" ] && [ -n "$(ls -A "$tmp/bob-fetch" 2>/dev/null)" ] &&
    bad "owners: bob's refused fetch wrote files" "$tmp/o"
# listings: only one's own (the id must not appear in anyone else's)
listed() { # listed TOKEN WHAT ID: whether ID is in TOKEN's `ls WHAT`
    $QC $TLS --token "$1" --json ls "$2" >"$tmp/ls.out" 2>&1 || return 2
    grep -q "$3" "$tmp/ls.out"
}
listed "$t_alice" artifacts "${art_a:-none}" && ok "owners: alice's ls lists her artifact" ||
    bad "owners: alice's ls lacks her artifact" "$tmp/ls.out"
listed "$t_bob" artifacts "${art_a:-none}"
[ $? -eq 1 ] && ok "owners: bob's ls does not list alice's artifact" ||
    bad "owners: bob's ls lists alice's artifact (or failed)" "$tmp/ls.out"
listed "$t_bob" jobs "${job_a:-none}"
[ $? -eq 1 ] && ok "owners: bob's ls jobs does not list alice's job" ||
    bad "owners: bob's ls jobs lists alice's job (or failed)" "$tmp/ls.out"
listed "$t_carol" artifacts "${art_a:-none}"
[ $? -eq 1 ] && ok "owners: carol (read, nothing of her own) does not see it" ||
    bad "owners: carol's ls lists alice's artifact (or failed)" "$tmp/ls.out"
listed "$t_carol" jobs "${job_a:-none}"
[ $? -eq 1 ] && ok "owners: carol's ls jobs does not list alice's job" ||
    bad "owners: carol's ls jobs lists alice's job (or failed)" "$tmp/ls.out"
expect "owners: carol GetJob on alice's job -> NOT_FOUND" 3 NOT_FOUND \
    $QC $TLS --token "$t_carol" status "${job_a:-none}"
listed "$t_admin" artifacts "${art_a:-none}" && ok "owners: the admin's ls lists it" ||
    bad "owners: the admin's ls lacks alice's artifact" "$tmp/ls.out"
listed "$t_admin" jobs "${job_a:-none}" && ok "owners: the admin's ls jobs lists alice's job" ||
    bad "owners: the admin's ls jobs lacks alice's job" "$tmp/ls.out"
expect "owners: the admin fetches alice's artifact" 0 "" \
    $QC $TLS --token "$t_admin" fetch "${art_a:-none}" -o "$tmp/admin-fetch"
expect "owners: still SERVING after the refusals" 0 SERVING $QC $TLS health

# SIGHUP, then wait for the reload's last line: "reloaded PATH", or "...; keeping the running
# configuration" when it was refused (a fixed sleep loses to a loaded machine).
reload_server() {
    pat='reloaded \|keeping the running configuration$'
    before=$(grep -c "$pat" "$log")
    kill -HUP "$server_pid"
    i=0
    while [ "$(grep -c "$pat" "$log")" -le "$before" ] && [ $i -lt 300 ]; do
        i=$((i + 1))
        sleep 0.1
    done
}

# ---- SIGHUP: a bad token file keeps the old tokens, a good one replaces them --------------------
printf 'admin:not-a-hash\n' >"$tmp/tokens"
reload_server
grep -q "reload: auth.token_file: .*tokens:1:" "$log" &&
    ok "reload: an invalid token file is logged" || bad "reload: no error logged" "$log"
expect "reload: the old admin token still works" 0 "" $QC $TLS --token "$t_admin" ls
printf 'admin:%s:later\n' "$(hash_of "$t_later")" >"$tmp/tokens"
reload_server
expect "reload: the new token works" 0 "" $QC $TLS --token "$t_later" ls
expect "reload: the removed token is refused" 3 UNAUTHENTICATED $QC $TLS --token "$t_admin" ls

expect "server 1 still SERVING after every refusal" 0 SERVING $QC $TLS health
kill -0 "$server_pid" 2>/dev/null || bad "server 1 died" "$log"
grep -q "$t_read\|$t_submit\|$t_admin" "$log" && bad "a token reached the log" "$log"
stop_server

# ---- two TLS addresses: each gets the certificate ---------------------------------------------
: >"$tmp/two.log" # before the loop below reads it, whenever the background shell opens it
"$QUANTD" serve --config "$tmp/quantd.yaml" --listen 127.0.0.1:0 --listen 127.0.0.2:0 \
    --data-dir "$tmp/d3" >"$tmp/two.log" 2>&1 &
two_pid=$!
bg_pids="$bg_pids $two_pid"
i=0
while [ "$(grep -c '^quantd: listening on' "$tmp/two.log")" -lt 2 ] && [ $i -lt 300 ] &&
    kill -0 "$two_pid" 2>/dev/null; do
    i=$((i + 1))
    sleep 0.1
done
for a in $(sed -n 's/^quantd: listening on \(127\.0\.0\.[12]:[0-9]*\)$/\1/p' "$tmp/two.log"); do
    expect "TLS on each of two addresses: $a" 0 SERVING \
        "$QUANTCTL" --server "$a" $TLS --tls-server-name localhost health
done
[ "$(grep -c '^quantd: listening on' "$tmp/two.log")" -eq 2 ] ||
    bad "a server with two TLS addresses did not listen on both" "$tmp/two.log"
kill -TERM "$two_pid"
wait "$two_pid" || bad "the two-address server did not stop cleanly" "$tmp/two.log"

# ---- server 2: mutual TLS -----------------------------------------------------------------------
write_config "tls: {cert: $pki/server.pem, key: $pki/server.key, client_ca: $pki/ca.pem}"
start_server "$tmp/d2" || exit 1
MTLS="$TLS --tls-cert $pki/client.pem --tls-key $pki/client.key"
expect "mTLS: the right client certificate" 0 "" $QC $MTLS info
expect "mTLS: no client certificate cannot connect" 4 "" $QC $TLS health
expect "mTLS: a client certificate of a foreign CA cannot connect" 4 "" \
    $QC $TLS --tls-cert "$pki/intruder.pem" --tls-key "$pki/intruder.key" health
expect "mTLS: a server certificate of a foreign CA is not trusted" 4 "" \
    $QC --tls-ca "$pki/foreign.pem" --tls-cert "$pki/client.pem" --tls-key "$pki/client.key" \
    health

# SIGHUP re-reads the certificate files: unreadable material keeps the running certificate,
# a valid new one (here from the foreign CA) serves the next connections.
cp "$pki/server.key" "$pki/server.key.good"
printf 'not a key\n' >"$pki/server.key"
reload_server
grep -q "reload: tls.key: .*not a PEM file" "$log" &&
    ok "reload: an invalid key is logged" || bad "reload: no tls.key error logged" "$log"
expect "reload: the old certificate still serves" 0 SERVING $QC $MTLS health
cp "$pki/stranger.pem" "$pki/server.pem"
cp "$pki/stranger.key" "$pki/server.key"
reload_server
expect "reload: the new certificate serves new connections" 0 SERVING \
    $QC --tls-ca "$pki/foreign.pem" --tls-cert "$pki/client.pem" --tls-key "$pki/client.key" \
    health
expect "reload: the old CA no longer trusts the server" 4 "" $QC $MTLS health
expect "server 2 still SERVING" 0 SERVING \
    $QC --tls-ca "$pki/foreign.pem" --tls-cert "$pki/client.pem" --tls-key "$pki/client.key" \
    health
stop_server

exit $fail
