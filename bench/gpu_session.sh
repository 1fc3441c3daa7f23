#!/usr/bin/env bash
# Every measurement a lent GPU session makes, as one command (a lease is ~15 minutes, start-up included), in order of
# importance, each step bounded so that the results of the earlier ones come back even when time runs out:
#
#   1. 20 full-size synthetic patients (bench/gpu.py's data), built once with every core;
#   2. bench/gpu.py's cheap configurations (eager, CUDA graphs at 1x / 2x / 4x batch) for the three models, on cores
#      0-7, while bench/cpu_determinism.py probes the host CPU's training hashes on cores 8-15 (issue 12's cross-CPU
#      question: compare with bench/results/cpu_determinism.md);
#   3. bench/gpu_profile.py: one epoch under torch.profiler per model, eager vs the decoder fast path vs CUDA graphs;
#   4. bench/gpu.py again with torch.compile + CUDA graphs added, if time is left; it writes the final table.
#
# Run from the repository root on the GPU machine (wheels the image lacks in .whl/, see the device tool's notes):
#     bash bench/gpu_session.sh          # results in $OUT (default /tmp/gpu-session)
# Nothing here is a test: the numbers go to bench/results/ and the README by hand, with the GPU named.
# shellcheck disable=SC2086  # $SHAPE is three numbers, split on purpose
set -u
OUT=${OUT:-/tmp/gpu-session}
DEADLINE_S=${DEADLINE_S:-540}   # the whole script, from its start
WORK=${WORK:-/tmp/gpu-work}
DEVICE=${DEVICE:-cuda}                          # cpu: a smoke test of this script (with PATIENTS=8 SHAPE="64 64 32")
PATIENTS=${PATIENTS:-20}
SHAPE=${SHAPE:-240 240 155}
# GPU work on cores 0-7, the CPU probe on 8-15 (the eager GPU step is bound by its host thread); no pinning on a
# machine with fewer cores or no taskset
GPU_CORES=(); PROBE_CORES=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 16 ]; then GPU_CORES=(taskset -c 0-7); PROBE_CORES=(taskset -c 8-15); fi
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - start) )); }
upto() { local n=$(( $(left) - $1 )); [ "$n" -lt 5 ] && n=5; echo "$n"; }   # seconds to the deadline less $1, at least 5
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ -z "${NO_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then   # NO_WHEELS=1: use what is installed
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, nibabel; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"
  lscpu | grep -E '^Model name|^CPU\(s\)'
  grep -o -w 'avx512f\|avx512_bf16\|amx_bf16\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== 1. data ($(left) s left)"
# (bench/gpu.py with no time for any configuration: it builds the data and stops)
python3 bench/gpu.py --device "$DEVICE" --work "$WORK" --patients "$PATIENTS" --shape $SHAPE --configs eager --budget-s -1 \
  > "$OUT/data.log" 2>&1
grep -E "^data:" "$OUT/data.log" || { tail -20 "$OUT/data.log"; exit 1; }

echo "== 2. cheap configurations + CPU probe ($(left) s left)"
timeout 200 "${PROBE_CORES[@]}" python3 bench/cpu_determinism.py --out "$OUT/cpu_determinism.md" > "$OUT/cpu_determinism.log" 2>&1 &
probe=$!
CHEAP=(eager graph graph_2x graph_4x)
timeout "$(upto 200)" "${GPU_CORES[@]}" python3 bench/gpu.py --device "$DEVICE" --work "$WORK" --patients "$PATIENTS" --shape $SHAPE --configs "${CHEAP[@]}" \
  --budget-s $(( $(left) - 300 )) --results-copy "$OUT/gpu_results.json" --out "$OUT/gpu_cheap.md" > "$OUT/gpu_cheap.log" 2>&1
grep -E "slices/s|FAILED" "$OUT/gpu_cheap.log"

echo "== 3. profile ($(left) s left)"
timeout "$(upto 130)" "${GPU_CORES[@]}" python3 bench/gpu_profile.py --device "$DEVICE" --work "$WORK" --patients "$PATIENTS" --shape $SHAPE --no-sweep \
  --variants eager eager_fastpath graph --steps 40 --batches 16 --out "$OUT/gpu_profile.md" > "$OUT/gpu_profile.log" 2>&1
grep -E "^\| (unet|resnet_unet|transunet) " "$OUT/gpu_profile.log"

echo "== 4. compiled + CUDA graphs, then the final table ($(left) s left)"
wait $probe
timeout "$(upto 15)" "${GPU_CORES[@]}" python3 bench/gpu.py --device "$DEVICE" --work "$WORK" --patients "$PATIENTS" --shape $SHAPE --configs "${CHEAP[@]}" compiled_graph_2x \
  --budget-s $(( $(left) - 130 )) --results-copy "$OUT/gpu_results.json" --out "$OUT/gpu.md" > "$OUT/gpu.log" 2>&1
grep -E "FAILED" "$OUT/gpu.log"
cat "$OUT/gpu.md" 2>/dev/null || cat "$OUT/gpu_cheap.md"
tail -12 "$OUT/cpu_determinism.md" 2>/dev/null
echo "== done in $(( $(date +%s) - start )) s"
