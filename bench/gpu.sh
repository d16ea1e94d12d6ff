#!/usr/bin/env bash
# One-shot GPU kit: every GPU check of hms in one script, under 8 minutes, one JSON file.
#
#   bash bench/gpu.sh                  # on a CUDA machine
#   bash bench/gpu.sh --dry            # anywhere (CI): each step in its cheapest CPU form,
#                                      # or planned and reported as skipped with the reason
#   bash bench/gpu.sh --out FILE.json  # default bench/results/gpu-<UTC time>[-dry].json
#
# Steps, each under its own time limit so a failing or hanging step cannot eat the budget:
#   env           torch / CUDA / onnxruntime / pynvml versions, nvidia-smi
#   cuda_tests    the tests that skip without CUDA (tests/train/test_engine.py -k cuda)
#   train_<model> bench/train.py --size full --compile: fp32 eager, bf16 + channels_last, then
#                 + torch.compile (each line printed as measured, so a cut compile keeps the rest):
#                 samples/s, ratio, GPU busy % (pynvml), peak GPU memory
#   predict       bench/predict.py --provider cuda (needs onnxruntime-gpu, else skipped)
#   dag           the tiny workflow (tests/workflow/tiny.yaml) with one GPU per training job
#                 and --resources gpu=1 (dry: snakemake -n of the same DAG)
# The kit as a whole stops starting steps after BUDGET_S (default 450 s; each step's limit is
# also cut to what is left), so it ends within 8 minutes even when steps hang.
# Exit status 0 when no step failed (skipped steps are not failures), else 1.
set -uo pipefail

DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (allowed: --dry, --out FILE)" >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
PY="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
STAMP="$(date -u +%Y%m%d-%H%M%S)"
[ -n "$OUT" ] || OUT="bench/results/gpu-$STAMP$([ "$DRY" = 1 ] && echo -dry).json"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hms_gpu_kit.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: > "$STEPS"
KIT_START=$(date +%s)
BUDGET_S="${BUDGET_S:-450}"

# skip NAME REASON: a step that was planned but not run.
skip() {
  printf '%s\tskipped\t\t\t\t%s\n' "$1" "$2" >> "$STEPS"
  echo "gpu.sh: $1: skipped ($2)" >&2
}

# step NAME LIMIT_S CMD...: run CMD with a time limit; record status, seconds and the log.
step() {
  local name="$1" limit="$2"; shift 2
  local t0 t1 rc status left
  left=$(( BUDGET_S - ($(date +%s) - KIT_START) ))
  if [ "$left" -lt 15 ]; then
    skip "$name" "kit budget of ${BUDGET_S} s spent"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "gpu.sh: $name (limit ${limit} s): $*" >&2
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$t0" "$t1" "$*" >> "$STEPS"
  echo "gpu.sh: $name: $status" >&2
}


step env 30 "$PY" - <<'EOF'
import importlib.util, json, shutil, subprocess
import torch
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda, "pynvml": importlib.util.find_spec("pynvml") is not None}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
try:
    import onnxruntime as ort
    info["onnxruntime"] = ort.__version__
    info["ort_providers"] = ort.get_available_providers()
except ImportError:
    info["onnxruntime"] = None
if shutil.which("nvidia-smi"):
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
print(json.dumps(info))
EOF

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
HAS_ORT_CUDA=$("$PY" -c "import onnxruntime as o; print(int('CUDAExecutionProvider' in o.get_available_providers()))" 2>/dev/null || echo 0)
if [ "$DRY" = 0 ] && [ "$HAS_CUDA" != 1 ]; then
  echo "gpu.sh: no CUDA device; run with --dry for the CPU rehearsal" >&2
fi

# The CUDA tests: on the CPU they run their CPU half and skip the rest (-rs lists why).
step cuda_tests 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/train/test_engine.py -k "cuda"

if [ "$DRY" = 1 ]; then
  step train_resnet1d_gru 120 "$PY" bench/train.py --models resnet1d_gru --size demo --batch-size 2 --steps 1 --warmup 0
  step train_efficientnet 120 "$PY" bench/train.py --models efficientnet --size demo --batch-size 2 --steps 1 --warmup 0
elif [ "$HAS_CUDA" = 1 ]; then
  step train_resnet1d_gru 80 "$PY" bench/train.py --models resnet1d_gru --size full --batch-size 32 --steps 20 --warmup 3 --compile
  step train_efficientnet 100 "$PY" bench/train.py --models efficientnet --size full --batch-size 16 --steps 10 --warmup 3 --compile
else
  skip train_resnet1d_gru "no CUDA device"
  skip train_efficientnet "no CUDA device"
fi

if [ "$DRY" = 1 ]; then
  skip predict "dry: bench/predict.py builds and exports a full ensemble (minutes on a CPU); on a GPU box it runs with --provider cuda"
elif [ "$HAS_ORT_CUDA" = 1 ]; then
  step predict 60 "$PY" bench/predict.py --provider cuda --windows 64 --folds 2 --batch-size 16 --threads 4
else
  skip predict "onnxruntime-gpu not installed (no CUDAExecutionProvider)"
fi

DAG=("$PY" -m snakemake --snakefile "$REPO/Snakefile" --directory "$WORK/dag" --configfile "$REPO/tests/workflow/tiny.yaml"
     --config 'compute={"gpus_per_job": 1, "preprocess_threads": 2, "train_threads": 4}' --resources gpu=1 --cores 8)
if [ "$DRY" = 1 ]; then
  step dag 120 "${DAG[@]}" -n
elif [ "$HAS_CUDA" = 1 ]; then
  step dag 150 "${DAG[@]}"
else
  skip dag "no CUDA device"
fi

mkdir -p "$(dirname "$OUT")"
"$PY" - "$STEPS" "$WORK" "$OUT" "$DRY" "$KIT_START" <<'EOF'
import json, os, re, sys, time
from pathlib import Path

steps_tsv, work, out, dry, kit_start = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])


def json_lines(text):
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


steps = {}
for line in Path(steps_tsv).read_text().splitlines():
    name, status, rc, t0, t1, what = line.split("\t")
    entry = {"status": status}
    if status == "skipped":
        entry["reason"] = what
    else:
        stdout = (work / f"{name}.out").read_text(errors="replace")
        stderr = (work / f"{name}.err").read_text(errors="replace")
        entry.update(command=what, rc=int(rc), seconds=round(float(t1) - float(t0), 1))
        results = json_lines(stdout)
        if results:
            entry["results"] = results
        if name == "cuda_tests":
            entry["summary"] = (stdout.strip().splitlines() or [""])[-1]
            entry["skip_reasons"] = re.findall(r"^SKIPPED .*$", stdout, re.M)
        if name == "dag":
            jobs = re.search(r"^total\s+(\d+)$", stdout + stderr, re.M)
            entry["jobs"] = int(jobs.group(1)) if jobs else None
            entry["mode"] = "planned (snakemake -n)" if dry else "run"
        if status != "ok":
            entry["log_tail"] = (stdout + stderr)[-3000:]
    steps[name] = entry

env = (steps.get("env", {}).get("results") or [{}])[0]
report = {"kit": "gpu.sh", "dry": dry, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "host": os.uname().nodename, "env": env, "seconds": round(time.time() - kit_start, 1),
          "ok": all(s["status"] in ("ok", "skipped") for s in steps.values()), "steps": steps}
Path(out).write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps({"out": out, "ok": report["ok"], "seconds": report["seconds"],
                  "steps": {k: v["status"] for k, v in steps.items()}}))
sys.exit(0 if report["ok"] else 1)
EOF
