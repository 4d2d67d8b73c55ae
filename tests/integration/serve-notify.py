#!/usr/bin/env python3
"""serve-notify.py - `quantd serve` speaks systemd's notify protocol: READY=1 once it
listens, WATCHDOG=1 at half of $WATCHDOG_USEC, RELOADING=1 then READY=1 around a SIGHUP reload,
STOPPING=1 on SIGTERM, then exit 0. The test plays systemd's side: a datagram socket named by
$NOTIFY_SOCKET. Environment: QUANTD (the binary)."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

fail = 0


def check(ok, what):
    global fail
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        fail = 1


def wait_for(sock, want, seconds):
    """Messages until one contains `want` (returned with those before it), or None."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append(msg)
        if want in msg.split("\n"):
            return seen
    print("    messages so far: %r" % seen)
    return None


with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    cfg = os.path.join(tmp, "quantd.yaml")
    with open(cfg, "w") as f:
        f.write("workers:\n  cpu: 1\n")
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    log = open(os.path.join(tmp, "log"), "w+")
    p = subprocess.Popen([os.environ["QUANTD"], "serve", "--config", cfg, "--listen",
                          "127.0.0.1:0", "--data-dir", os.path.join(tmp, "data")],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = wait_for(sock, "READY=1", 30)
        check(seen is not None, "READY=1 once listening")
        log.seek(0)
        check(seen is not None and "listening on" in log.read(), "READY=1 after the listen line")
        t0 = time.monotonic()
        seen = wait_for(sock, "WATCHDOG=1", 5)
        check(seen is not None, "WATCHDOG=1 within the interval (%.2f s)" % (time.monotonic() - t0))
        p.send_signal(signal.SIGHUP)
        seen = wait_for(sock, "RELOADING=1", 10)
        check(seen is not None, "RELOADING=1 on SIGHUP")
        seen = wait_for(sock, "READY=1", 10)
        check(seen is not None, "READY=1 after the reload")
        p.send_signal(signal.SIGTERM)
        seen = wait_for(sock, "STOPPING=1", 10)
        check(seen is not None, "STOPPING=1 on SIGTERM")
        rc = p.wait(timeout=60)
        check(rc == 0, "exit status %d after SIGTERM" % rc)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if fail:
            log.seek(0)
            sys.stdout.write(log.read())
sys.exit(fail)
