#!/bin/bash
# The CUDA paths in one pass, on a machine with a GPU: the test suite's CUDA cases, the
# throughput benchmark, a short training run and the shipped model on the full protocol.
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh      # logs and JSON under $OUT, a table on stdout
#   RUNS="zoo:fashion-mnist path/to/run" ZOO_SAMPLES="1000 5000" OUT=/tmp/gpu bash scripts/gpu_check.sh
#
# RUNS (default: the shipped model) are scored on all 10,000 test images at each S in ZOO_SAMPLES;
# their JSON and per-image files come back as $OUT/NAME_S<S>.json / .npz.
#
# Fashion-MNIST is read from $VAEKIT_DATA (or the usual places). Each step has its own time
# limit, so one that hangs costs its own minutes and the rest still run.
set -u
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT/runs"
step() {  # step NAME SECONDS COMMAND...: runs it, keeps its log, notes its exit status and seconds
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/steps.txt"
    tail -n 4 "$OUT/$name.log" | cut -c1-300
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step tests_cuda 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_evaluate.py tests/test_bad_inputs.py -k "cuda"
step train 120 $PY -m vaekit train --device cuda --epochs 2 --val-size 10000 --out "$OUT/runs/short" --quiet
cp "$OUT/runs/short/metrics.csv" "$OUT/short_metrics.csv" 2>/dev/null
step evaluate_short 60 $PY -m vaekit evaluate "$OUT/runs/short" --device cuda --test-subset 1000 --nll-samples 1000 --quiet --headline
step throughput 150 $PY benchmarks/throughput.py --device cuda --repeats 2 --out "$OUT/throughput_cuda.json"
for run in ${RUNS:-zoo:fashion-mnist}; do
    name=$(basename "${run/:/-}")
    # A zoo model is copied into the working directory to be evaluated; a path is scored in place.
    dir=$OUT/runs/$name target=$run
    [[ $run == zoo:* ]] || { rm -rf "$dir"; cp -r "$run" "$dir"; target=$dir; }
    for s in ${ZOO_SAMPLES:-1000 5000}; do
        (cd "$OUT/runs" && step "${name}_S$s" 300 $PY -m vaekit evaluate "$target" --device cuda \
            --no-quality --nll-samples "$s" --checkpoint latest --quiet --headline)
        cp "$dir/evaluation.json" "$OUT/${name}_S$s.json"
        cp "$dir/evaluation_per_image.npz" "$OUT/${name}_S$s.npz"
    done
done
cat "$OUT/steps.txt"
