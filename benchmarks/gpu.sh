#!/usr/bin/env bash
# GPU benchmark of issue 7: our training step against a plain PyTorch loop on one H100/H200,
# for the study's five 18-layer presets (seq 1024, micro-batch 48), compilation included, in
# under 8 minutes. Nothing to install: it needs only a Python that has torch, numpy, pyyaml and
# rich, and runs the package from src/.
#
#   benchmarks/gpu.sh                      # the GPU run; with $OUT set, also $OUT/bench_gpu.txt
#   benchmarks/gpu.sh --device cpu         # dry run of the same script on CPU (tiny models)
#   benchmarks/gpu.sh --ours-micro-batch 64
#
# Arguments are passed on to benchmarks/bench_train.py. The benchmark keeps to BENCH_BUDGET_S
# seconds by itself (it cuts timing short, then runs only our loop for late layer-wise
# profiles, then skips profiles, and says which); `timeout` is only a last resort.
set -euo pipefail
cd "$(dirname "$0")/.."

budget="${BENCH_BUDGET_S:-400}"
hard_limit="${BENCH_HARD_LIMIT_S:-470}"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
            python="$candidate"
            break
        fi
    done
fi
if [[ -z "$python" ]]; then
    echo "gpu.sh: no python3/python with torch found; set PYTHON=/path/to/python" >&2
    exit 2
fi

device=cuda
device_given=false
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --device) device="${args[i + 1]:-cuda}"; device_given=true ;;
        --device=*) device="${args[i]#--device=}"; device_given=true ;;
    esac
done
extra=()
$device_given || extra+=(--device "$device")

name=gpu
[[ "$device" == cuda ]] || name="$device"
out_dir="${OUT:-}"
if [[ -n "$out_dir" ]]; then
    mkdir -p "$out_dir"
    extra+=(--json "$out_dir/bench_$name.json")
fi

command=(
    timeout --kill-after=10 "$hard_limit"
    env "PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}"
    "$python" benchmarks/bench_train.py --time-budget "$budget"
    ${extra[@]+"${extra[@]}"} "$@"
)
echo "+ ${command[*]}" >&2
if [[ -n "$out_dir" ]]; then
    "${command[@]}" 2>&1 | tee "$out_dir/bench_$name.txt"
else
    "${command[@]}"
fi
