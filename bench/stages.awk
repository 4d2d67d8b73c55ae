# stages.awk - the time split of one `quantd quantize` run, from its progress lines.
#
#   awk -v start=US -v end=US -f stages.awk STAMPED_STDERR
#
# quantd prints its progress on stderr without timestamps ("stage: calibrate+quantize",
# "layer 3/16  41 s elapsed, eta 172 s", "stage: pack and write DIR"); bench/run prefixes
# every line with the microsecond clock at the moment it arrived ("<us> <text>"). start and
# end are the clock just before the command started and just after it exited.
#
# Output, one tab-separated record per line:
#   stage  NAME  SECONDS   each stage, from its line to the next stage line (or to the end);
#                          what runs before the first stage line is "start-up" (opening
#                          the model, checking the spec, reading the calibration tokens)
#   layer  I     SECONDS   each "layer I/N" line: the time since the previous layer line (or
#                          since the stage that contains it started)
#   total  -     SECONDS   end - start
# A stage's name drops a trailing path ("pack and write /x/y" -> "pack and write").

function flush_stage(t) {
    if (cur != "") printf "stage\t%s\t%.3f\n", cur, (t - cur_t) / 1e6
}

BEGIN {
    cur = "start-up"
    cur_t = start
    last_layer_t = start
}

{
    t = $1
    text = $0
    sub(/^[0-9]+ /, "", text)
}

text ~ /^stage: / {
    flush_stage(t)
    cur = substr(text, 8)
    sub(/ \/.*$/, "", cur)
    cur_t = t
    last_layer_t = t
    next
}

text ~ /^layer [0-9]+\/[0-9]+/ {
    split(text, w, /[ \/]/)
    printf "layer\t%d\t%.3f\n", w[2], (t - last_layer_t) / 1e6
    last_layer_t = t
    next
}

END {
    flush_stage(end)
    printf "total\t-\t%.3f\n", (end - start) / 1e6
}
