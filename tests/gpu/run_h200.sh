#!/usr/bin/env bash
# The whole GPU run of docs/gpu.md, on one air-gapped CUDA host (the project's H200 machine):
# Ansible from carried wheels, then site.yml (twice: the second must change nothing), greedy
# equality of the PD path against a plain instance, the decode's KV-transfer counters,
# `vllm bench serve` through the proxy and straight to the plain instance, bench.yml,
# status.yml, teardown.yml; then the same with the Mooncake connector.
#
#   tests/gpu/run_h200.sh WHEELHOUSE RESULTS_DIR
#
# WHEELHOUSE: playbooks/wheelhouse.yml's output for inventories/cuda-local plus the
# ansible-core and resolvelib wheels (tests/gpu/pack_parts.sh carries it in parts; pieces of
# split wheels are joined here). Every step's output goes to RESULTS_DIR/<step>.log, its exit
# status to RESULTS_DIR/steps.log; a failed step is recorded and the run goes on where it can.
# RESULTS_DIR/DONE marks the end. Runs as root on the host it deploys to.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W=$(cd "${1:?usage: run_h200.sh WHEELHOUSE RESULTS_DIR}" && pwd)
R=${2:?usage: run_h200.sh WHEELHOUSE RESULTS_DIR}
mkdir -p "$R"
R=$(cd "$R" && pwd)
cd "$ROOT"
rm -f "$R/DONE"

# The GPU machine's rule: NVLink multicast stays off, in every process started from here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export ANSIBLE_CONFIG="$ROOT/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$R/steps.log"; }
# step NAME TIMEOUT CMD...: output to NAME.log, status to steps.log.
step() {
  local name=$1 limit=$2 rc t0=$SECONDS
  shift 2
  log "BEGIN $name"
  timeout "$limit" "$@" >"$R/$name.log" 2>&1
  rc=$?
  log "END $name rc=$rc $((SECONDS - t0))s"
  return $rc
}
recap() { grep -A3 '^PLAY RECAP' "$R/$1.log" | tee -a "$R/steps.log"; }
wait_http() {  # URL SECONDS
  local i
  for ((i = 0; i < $2; i += 2)); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 2
  done
  return 1
}

ENV=$(python3 -c 'import sys; print(sys.prefix)')
PY="$ENV/bin/python3"
log "host: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1); python $("$PY" -V 2>&1); env $ENV"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tee -a "$R/steps.log"

# Split wheels back together (pack_parts.sh names pieces WHEEL.piece.NN).
for first in "$W"/*.piece.00; do
  [[ -e $first ]] || continue
  base=${first%.piece.00}
  cat "$base".piece.* >"$base" && rm -f "$base".piece.*
done
log "wheelhouse: $(ls "$W"/*.whl | wc -l) wheels, $(du -sh "$W" | cut -f1)"

# Ansible itself, from the wheelhouse (the image has jinja2, PyYAML, cryptography, packaging).
step ansible 300 "$PY" -m pip install -q --no-index --no-deps --no-compile "$W"/ansible_core-*.whl "$W"/resolvelib-*.whl
mkdir -p .ansible/collections/ansible_collections/openfuyao
ln -sfn "$ROOT" .ansible/collections/ansible_collections/openfuyao/pd
AP="$ENV/bin/ansible-playbook"
"$AP" --version 2>&1 | head -1 | tee -a "$R/steps.log"

# The image's python3 lives in a venv that holds the CUDA torch: the stack, the proxy and
# Mooncake go there (no second torch). supervisor gets its own venv where venv creation works.
EXTRA=(-e "pd_offline_wheelhouse=$W" -e "vllm_pd_venv=$ENV" -e "proxy_venv=$ENV" -e "mooncake_venv=$ENV"
       -e "bench_python=$PY")
if ! { "$PY" -m venv /tmp/pd-venv-check && /tmp/pd-venv-check/bin/python -m pip --version; } >"$R/venv-check.log" 2>&1; then
  log "python3 -m venv does not give a venv with pip here: supervisor goes into $ENV"
  EXTRA+=(-e "vllm_pd_supervisor_venv=$ENV")
fi
INV=inventories/cuda-local/cluster.ini
MODEL=/var/lib/openfuyao-pd/models/tiny-llama
PLAIN_PORT=8300

# NAME URL [LOAD...]: vllm bench serve, the same prompts for every target. Default load: 200
# requests at 20/s (latency at a steady rate); sat-*: 400 requests, 64 at a time (capacity).
bench_serve() {
  local name=$1 url=$2
  shift 2
  local load=("$@")
  [[ ${#load[@]} -gt 0 ]] || load=(--num-prompts 200 --request-rate 20)
  step "bench-$name" 300 "$ENV/bin/vllm" bench serve --backend vllm --base-url "$url" --endpoint /v1/completions \
    --model tiny-llama --tokenizer "$MODEL" --dataset-name random --random-input-len 256 --random-output-len 64 \
    "${load[@]}" --ignore-eos --seed 0 --percentile-metrics ttft,tpot,itl,e2el \
    --metric-percentiles 50,90,99 --save-result --result-dir "$R" --result-filename "bench-$name.json"
  grep -E '^(Request throughput|Output token throughput|Mean TTFT|Median TTFT|P99 TTFT|Mean TPOT|Median TPOT|P99 TPOT)' \
    "$R/bench-$name.log" | sed "s/^/  $name: /" | tee -a "$R/steps.log"
}

# A plain (non-disaggregated) instance with the plan's engine flags and no connector: the
# reference for greedy equality and the direct target of the benchmark.
start_plain() {
  "$AP" playbooks/plan.yml -i "$INV" -e "pd_plan_output=$R/plan-nixl.json" >"$R/plan-nixl.log" 2>&1
  "$PY" - "$R/plan-nixl.json" "$PLAIN_PORT" "$ENV/bin" >"$R/plain-argv.json" <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
inst = next(i for i in plan["instances"] if i["role"] == "decode")
argv = list(inst["argv"])
i = argv.index("--kv-transfer-config"); del argv[i:i + 2]
argv[argv.index("--port") + 1] = sys.argv[2]
argv[0] = sys.argv[3] + "/" + argv[0]
env = {k: v for k, v in inst["env"].items() if not k.startswith("VLLM_NIXL")}
print(json.dumps({"argv": argv, "env": env}))
PYEOF
  log "plain instance: $(cat "$R/plain-argv.json")"
  # shellcheck disable=SC2046
  env $("$PY" -c 'import json,sys; print(" ".join(f"{k}={v}" for k, v in json.load(open(sys.argv[1]))["env"].items()))' "$R/plain-argv.json") \
    setsid nohup $("$PY" -c 'import json,shlex,sys; print(" ".join(json.load(open(sys.argv[1]))["argv"]))' "$R/plain-argv.json") \
    >"$R/plain.log" 2>&1 </dev/null &
  echo $! >"$R/plain.pid"
}

# ---------------------------------------------------------------- NIXL (the inventory's default)
step site1 900 "$AP" playbooks/site.yml -i "$INV" "${EXTRA[@]}"
recap site1
if [[ -e $MODEL/config.json ]]; then start_plain; fi
step site2 600 "$AP" playbooks/site.yml -i "$INV" "${EXTRA[@]}"
recap site2
if wait_http "http://127.0.0.1:$PLAIN_PORT/v1/models" 300; then log "plain instance serves"; else log "plain instance did not come up"; tail -30 "$R/plain.log" >>"$R/steps.log"; fi

step kv-before-nixl 60 "$PY" tests/gpu/pd_check.py metrics --url http://127.0.0.1:8200 --out "$R/kv-before-nixl.txt"
step greedy-nixl 300 "$PY" tests/gpu/pd_check.py greedy --pd http://127.0.0.1:9090 --plain "http://127.0.0.1:$PLAIN_PORT" \
  --model tiny-llama --out "$R/greedy-nixl.json"
head -1 "$R/greedy-nixl.log" | tee -a "$R/steps.log"
step kv-after-nixl 60 "$PY" tests/gpu/pd_check.py metrics --url http://127.0.0.1:8200 --out "$R/kv-after-nixl.txt"
grep -E 'nixl_xfer_time_seconds_count|nixl_bytes_transferred_sum|external_kv_transfer' "$R/kv-after-nixl.txt" | sed 's/^/  decode: /' | tee -a "$R/steps.log"

bench_serve proxy-nixl http://127.0.0.1:9090
bench_serve direct http://127.0.0.1:$PLAIN_PORT
SAT=(--num-prompts 400 --request-rate inf --max-concurrency 64)
bench_serve sat-proxy-nixl http://127.0.0.1:9090 "${SAT[@]}"
bench_serve sat-direct http://127.0.0.1:$PLAIN_PORT "${SAT[@]}"
curl -sf http://127.0.0.1:9090/metrics | grep -E '^pd_proxy_(stage_seconds|requests_total)' >"$R/proxy-metrics-nixl.txt"

step benchyml 400 "$AP" playbooks/bench.yml -i "$INV" "${EXTRA[@]}" -e bench_num_prompts=20 -e bench_host=localhost
recap benchyml
step status 120 "$AP" playbooks/status.yml -i "$INV" "${EXTRA[@]}" -e "day2_status_output=$R/status-nixl.json"
recap status
step teardown-nixl 300 "$AP" playbooks/teardown.yml -i "$INV" "${EXTRA[@]}"
recap teardown-nixl

# ---------------------------------------------------------------- Mooncake (the variant)
MC=(-e @inventories/cuda-local/mooncake.yml)
step site-mooncake 900 "$AP" playbooks/site.yml -i "$INV" "${EXTRA[@]}" "${MC[@]}"
recap site-mooncake
step greedy-mooncake 300 "$PY" tests/gpu/pd_check.py greedy --pd http://127.0.0.1:9090 --plain "http://127.0.0.1:$PLAIN_PORT" \
  --model tiny-llama --out "$R/greedy-mooncake.json"
head -1 "$R/greedy-mooncake.log" | tee -a "$R/steps.log"
step kv-after-mooncake 60 "$PY" tests/gpu/pd_check.py metrics --url http://127.0.0.1:8200 --out "$R/kv-after-mooncake.txt"
grep -E 'external_kv_transfer|external_prefix_cache_hits' "$R/kv-after-mooncake.txt" | sed 's/^/  decode: /' | tee -a "$R/steps.log"
bench_serve proxy-mooncake http://127.0.0.1:9090
bench_serve sat-proxy-mooncake http://127.0.0.1:9090 "${SAT[@]}"
step site2-mooncake 600 "$AP" playbooks/site.yml -i "$INV" "${EXTRA[@]}" "${MC[@]}"
recap site2-mooncake
step teardown-mooncake 300 "$AP" playbooks/teardown.yml -i "$INV" "${EXTRA[@]}" "${MC[@]}"
recap teardown-mooncake

if [[ -s $R/plain.pid ]]; then kill "$(cat "$R/plain.pid")" 2>/dev/null; fi
nvidia-smi >"$R/nvidia-smi.txt" 2>&1
log "done"
touch "$R/DONE"
