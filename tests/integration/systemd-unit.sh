#!/bin/sh
# systemd-unit.sh UNIT - `systemd-analyze verify` accepts the unit (generated for this build,
# naming its quantd binary), and `systemd-analyze security --offline` rates its exposure
# (reported; the test fails above 3.0, systemd's "MEDIUM"). The example config it names is
# checked by `quantd config check`. Skipped where systemd-analyze is not installed.
unit=$1
command -v systemd-analyze >/dev/null 2>&1 || { echo "skipped: systemd-analyze not found"; exit 77; }
[ -f "$unit" ] || { echo "FAIL: $unit missing"; exit 1; }
out=$(systemd-analyze verify "$unit" 2>&1)
rc=$?
if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL: systemd-analyze verify $unit (exit $rc):"
    echo "$out"
    exit 1
fi
echo "ok   systemd-analyze verify quantd.service"
sec=$(systemd-analyze security --offline=true "$unit" 2>&1 | grep "Overall exposure level")
if [ -z "$sec" ]; then
    echo "note: systemd-analyze security --offline is not supported here; exposure not rated"
else
    echo "$sec"
    level=$(echo "$sec" | sed -n 's/.*: \([0-9.]*\) .*/\1/p')
    if awk -v l="$level" 'BEGIN { exit !(l > 3.0) }'; then
        echo "FAIL: exposure level $level above 3.0"
        exit 1
    fi
    echo "ok   exposure level $level"
fi
"$QUANTD" config check "$QD_SOURCE_DIR/systemd/quantd.yaml" || { echo "FAIL: quantd.yaml"; exit 1; }
echo "ok   quantd config check systemd/quantd.yaml"
