#!/usr/bin/env bash
# Waits (at most WAIT seconds) for tests/gpu/run_h200.sh to finish in RESULTS_DIR, prints its
# step log, and packs the results into OUT (the device tool returns at most 8 files).
#   tests/gpu/collect.sh RESULTS_DIR WAIT OUT
set -uo pipefail
R=${1:?usage: collect.sh RESULTS_DIR WAIT OUT}; WAIT=${2:?}; OUT=${3:?}
for ((i = 0; i < WAIT; i += 5)); do
  [[ -e $R/DONE ]] && break
  sleep 5
done
[[ -e $R/DONE ]] && echo "run finished" || echo "run still going after ${WAIT}s"
cat "$R/steps.log" 2>/dev/null
mkdir -p "$OUT"
tar -czf "$OUT/results.tgz" -C "$(dirname "$R")" "$(basename "$R")" 2>/dev/null
cp "$R/steps.log" "$OUT/" 2>/dev/null
ls -la "$OUT"
