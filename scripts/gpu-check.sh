#!/usr/bin/env bash
# Check hieros on a CUDA machine (issue 14) in one go, within a time budget, and keep what it shows.
#
#   bash scripts/gpu-check.sh           # in the repository root, after `source <install-wheels.sh> .whl`
#
# Steps, each under its own `timeout` (at most what is left of the budget; a step that would get less than
# 20 s is skipped): nvidia-smi; the torch/CUDA versions; the CUDA tests (`pytest -m cuda`, skipped with a message
# where pytest is missing); `python -m hieros.bench` at paper size on the device for the agent and world-model
# benchmarks, float32 and bf16-mixed; a 300-step paper-size Atari100k Pong run (`fabric=gpu`: CUDA, bf16);
# the compile benchmark (level-0 update eager vs inductor), bf16-mixed (what fabric=gpu trains with) and float32.
# A benchmark step stopped by its timeout keeps the JSON of the benchmarks it finished (agent before world_model).
# The three-level figures compiled are not in the budget: `python -m hieros.bench --compile --only agent` gives them.
#
# Everything lands in $OUT (default ./gpu-out), at most 8 files (what a lent machine sends back): gpu-check.log
# (every step's output), nvidia-smi.txt, bench-fp32.json, bench-bf16.json, pong.log, bench-compile-bf16.json,
# bench-compile-fp32.json and summary.json (each step's exit code and seconds, and the headline figures).
#
# Environment: PYTHON (default python3), GPU_CHECK_DEVICE (cuda, default; cpu tries the script on a machine
# without a GPU; it sets OMP_WAIT_POLICY=PASSIVE unless set: spinning OpenMP threads stall on a shared CPU),
# GPU_CHECK_QUICK=1 (--quick benchmark sizes and a tiny Pong run), GPU_CHECK_BENCH (default "agent world_model":
# the benchmarks of the float32 and bf16 steps), GPU_CHECK_BUDGET_S (default 480: the whole script's seconds).
# Runs go to a temporary folder, never to $OUT or the checkout.
set -uo pipefail

PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
read -r -a BENCH <<<"${GPU_CHECK_BENCH:-agent world_model}"
[ "$DEVICE" = cuda ] || export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu-check.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hieros-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export HIEROS_HOME=$WORK/home PYTHONUNBUFFERED=1
: >"$LOG"
: >"$WORK/steps.tsv"
deadline=$((SECONDS + BUDGET))

bench_args=(--device "$DEVICE")
if [ "$QUICK" = 1 ]; then
  bench_args+=(--quick)
  pong=("+experiment=[atari100k,smoke]" env.game=pong "fabric.accelerator=$DEVICE" logger=none training.steps=100
    training.eval_every=0 training.final_eval_episodes=1 training.eval_max_steps=20 training.log_every=25
    training.checkpoint_every=0 training.torch_threads=1 training.progress=plain)
else
  fabric=gpu
  [ "$DEVICE" = cuda ] || fabric=cpu
  pong=(+experiment=atari100k env.game=pong "fabric=$fabric" logger=none training.steps=300 training.log_every=50
    training.eval_every=0 training.final_eval_episodes=1 training.eval_max_steps=100 training.progress=plain)
fi
pong+=("hydra.run.dir=$WORK/pong")

# step NAME TIMEOUT_S COMMAND...: run COMMAND under timeout, its output appended to the log (and to $STEP_OUT when
# set); one row of steps.tsv: name, exit code (124: timed out, "skipped"), seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - SECONDS))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    printf '%s\tskipped\t0\n' "$name" >>"$WORK/steps.tsv"
    return 0
  fi
  echo "== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS rc
  if [ -n "${STEP_OUT:-}" ]; then
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" >"$STEP_OUT"
  else
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  fi
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$WORK/steps.tsv"
}

if command -v nvidia-smi >/dev/null; then
  STEP_OUT=$OUT/nvidia-smi.txt step nvidia-smi 30 nvidia-smi
else
  echo "nvidia-smi: not on PATH" | tee -a "$LOG" >"$OUT/nvidia-smi.txt"
fi
step versions 60 "$PY" -c "import sys, torch, lightning, hydra, gymnasium, ale_py, hieros
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'lightning', lightning.__version__, 'hydra', hydra.__version__, 'gymnasium', gymnasium.__version__,
      'ale_py', ale_py.__version__)
print('cuda available:', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if "$PY" -c "import pytest" 2>/dev/null; then
  step tests-cuda 150 "$PY" -m pytest -p no:cacheprovider -q -m cuda tests/test_bench_device.py
else
  echo "== tests-cuda: skipped, pytest is not installed for $PY" | tee -a "$LOG"
  printf 'tests-cuda\tskipped\t0\n' >>"$WORK/steps.tsv"
fi
step bench-fp32 210 "$PY" -m hieros.bench "${bench_args[@]}" --only "${BENCH[@]}" --out "$OUT/bench-fp32.json"
step bench-bf16 180 "$PY" -m hieros.bench "${bench_args[@]}" --precision bf16-mixed --only "${BENCH[@]}" \
  --out "$OUT/bench-bf16.json"
STEP_OUT=$OUT/pong.log step pong 180 "$PY" -m hieros "${pong[@]}"
if [ -f "$WORK/pong/metrics.jsonl" ]; then
  { echo "== metrics.jsonl (last 3 reports)"; tail -n 3 "$WORK/pong/metrics.jsonl"; } >>"$OUT/pong.log"
fi
step bench-compile-bf16 240 "$PY" -m hieros.bench "${bench_args[@]}" --precision bf16-mixed --only compile \
  --out "$OUT/bench-compile-bf16.json"
step bench-compile-fp32 240 "$PY" -m hieros.bench "${bench_args[@]}" --only compile --out "$OUT/bench-compile-fp32.json"

"$PY" - "$OUT" "$WORK/steps.tsv" "$WORK/pong/metrics.jsonl" "$DEVICE" "$QUICK" <<'EOF' | tee -a "$LOG"
"""summary.json: each step's exit code and seconds, and the headline figures of each benchmark file."""
import json
import sys
from pathlib import Path

out, steps_tsv, pong_metrics, device, quick = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]


def get(tree, *keys):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def headline(path):
    report = json.loads(path.read_text())
    figures = {key: report.get(key) for key in ("device", "device_name", "torch", "precision", "compile")}
    for name, entry in report["benchmarks"].items():
        if "error" in entry:
            figures[name] = {"error": entry["error"]}
            continue
        result = entry["result"]
        if name == "agent":
            s5 = get(result, "level0_update", "s5") or {}
            figures[name] = {
                "level0_update_s5_s": s5.get("s"),
                "level0_update_rssm_s": get(result, "level0_update", "rssm", "s"),
                "world_model_s": get(s5, "phases", "world_model_s"),
                "imagination_actor_critic_s": get(s5, "phases", "imagination_actor_critic_s"),
                "host_syncs": s5.get("host_syncs"),
                "host_syncs_cuda": sum((s5.get("host_syncs_cuda") or {}).values()) if "host_syncs_cuda" in s5 else None,
                "three_level_per_env_step_s": get(result, "three_level", "per_env_step_s"),
                "policy_step_ms": get(result, "policy_step", "ms"),
                "policy_step_all_levels_ms": get(result, "policy_step", "all_levels_act_ms"),
                "peak_memory_mib": get(result, "memory", "peak_mib"),
                "loop_steps_per_second": get(result, "loop", "steps_per_second"),
                "matmul_gflops": result.get("matmul_gflops"),
            }
        elif name == "world_model":
            figures[name] = {
                **{f"update_{m}_s": get(result, "update", m, "s") for m in ("s5", "rssm", "gru")},
                "s5_imagination_forward_s": get(result, "imagination", "s5", "forward_s"),
                "s5_imagination_forward_backward_s": get(result, "imagination", "s5", "forward_backward_s"),
                "level0_update_peak_mib": get(result, "memory", "level0_update_s5", "peak_mib"),
            }
        elif name == "compile":
            figures[name] = {
                key: {
                    "eager_s": get(value, "eager", "s"),
                    "compiled_s": get(value, "compiled", "s"),
                    "speedup": value.get("speedup"),
                    "compile_s": value.get("compile_s"),
                }
                for key, value in result.items()
                if key.startswith("depth")
            }
    return figures


steps = []
for line in steps_tsv.read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps.append({"step": name, "exit": rc if rc == "skipped" else int(rc), "seconds": int(seconds)})
summary = {"device": device, "quick": quick == "1", "steps": steps, "benchmarks": {}}
for path in sorted(out.glob("bench-*.json")):
    try:
        summary["benchmarks"][path.stem] = headline(path)
    except (ValueError, KeyError, TypeError) as error:
        summary["benchmarks"][path.stem] = {"unreadable": f"{type(error).__name__}: {error}"}
if pong_metrics.exists():
    reports = [json.loads(line) for line in pong_metrics.read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(reports) if "sps" in r), {})
    summary["pong"] = {key: last.get(key) for key in ("step", "sps", "updates/level0")}
summary["ok"] = all(s["exit"] == 0 for s in steps)
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
