#!/usr/bin/env bash
# The whole GPU measurement of issue 3 in one call: decoders vs their original VAEs (images and video), then three
# pipelines end to end. Writes JSON + PNG per part to $OUT (default bench_gpu/) and prints every table.
#
#   benchmarks/gpu_bench.sh                 # everything: images compile video e2e
#   benchmarks/gpu_bench.sh images e2e      # some parts
#   RUNS=10 DTYPE=bf16 benchmarks/gpu_bench.sh
#   SMOKE=1 benchmarks/gpu_bench.sh         # CPU, tiny configs and sizes: checks the script itself in ~a minute
#
# Random weights throughout (latency does not depend on weight values); run from the repository root with the
# package installed (pip install -e .). Without a GPU (and without SMOKE=1) the CLI exits 2 with one line.
set -euo pipefail

OUT=${OUT:-bench_gpu}
RUNS=${RUNS:-20}
DTYPE=${DTYPE:-fp16}
DEVICE=cuda
IMAGES=512,1024,2048 COMPILE_SIZE=1024 SVD=14x576x1024 WAN=81x480x832 LTX=121x512x768 PIPE_SIZE=() EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu DTYPE=fp32 RUNS=1 IMAGES=32,64 COMPILE_SIZE=32 SVD=3x32x32 WAN=5x32x32 LTX=9x64x64
    EXTRA=(--tiny --warmup 0 --threads 1)
fi
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(images compile video e2e)
mkdir -p "$OUT"

bench() {  # bench NAME ARGS...: run one fastdecoders bench, keep its JSON and plot, print its table
    local name=$1
    shift
    echo "== $name: fastdecoders bench $* --device $DEVICE ${EXTRA[*]}" >&2
    python -m fastdecoders bench "$@" --device "$DEVICE" "${EXTRA[@]}" --json -o "$OUT/$name.png" > "$OUT/$name.json"
    python - "$OUT/$name.json" <<'PY'
import json, sys
from fastdecoders.commands.bench_cmd import render
print(render(json.load(open(sys.argv[1]))))
print()
PY
}

python -c "import torch; print('#', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU',
'torch', torch.__version__, 'cuda', torch.version.cuda)"
date -u +"# %Y-%m-%d %H:%M UTC"

for part in "${PARTS[@]}"; do
    case $part in
        images)  # the issue's targets: TAE-192 and TAE-64 at 1024² against the SDXL decoder, on the same backend
            bench images taesdxl tae192-sdxl effvit-sdxl --sizes "$IMAGES" --dtype "$DTYPE" \
                --backend eager,channels_last,cuda-graphs --runs "$RUNS" ;;
        compile)  # torch.compile builds take minutes: one resolution
            bench compile taesdxl tae192-sdxl --sizes "$COMPILE_SIZE" --dtype "$DTYPE" --backend compile \
                --runs "$RUNS" ;;
        video)  # each family at its pipeline's size: SVD 14×576×1024, Wan 2.1 81×480×832, LTX 121×512×768
            bench video_svd tae-temporal-svd --sizes "$SVD" --dtype "$DTYPE" --runs 10 --warmup 2
            bench video_wan taew2_1 --sizes "$WAN" --dtype "$DTYPE" --runs 10 --warmup 2
            bench video_ltx taeltx_2 --sizes "$LTX" --dtype "$DTYPE" --runs 10 --warmup 2 ;;
        e2e)  # whole pipelines at their published sizes, classifier-free guidance on; composed from 2-step runs
            bench e2e_sdxl --pipeline sdxl --decoder tae192-sdxl --steps 1,4,30 --dtype "$DTYPE" --runs 5
            bench e2e_svd --pipeline svd --decoder tae-temporal-svd --steps 1,4,25 --dtype "$DTYPE" --runs 3
            bench e2e_wan --pipeline wan2.1 --decoder taew2_1 --steps 1,4,50 \
                --dtype "$([ "$DEVICE" = cuda ] && echo bf16 || echo "$DTYPE")" --runs 3 ;;
        *) echo "unknown part $part (expected images, compile, video, e2e)" >&2; exit 2 ;;
    esac
done
echo "results: $OUT/*.json, plots: $OUT/*.png" >&2
