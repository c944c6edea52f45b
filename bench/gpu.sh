#!/usr/bin/env bash
# The first GPU run: prepared here, run on a lent GPU machine in four calls of the device
# tool, each carrying at most 64 MiB (README, "GPU"). That machine has Python 3.12, CUDA 13's
# nvidia-* wheels and CPU onnxruntime in its venv, and no internet; it lacks onnxruntime-gpu
# (one 244 MiB wheel, carried in four pieces) and TensorFlow (so the backbone's graph travels
# without its weights and gets seeded random ones there: bench/gpu_graph.py).
#
#   bash bench/gpu.sh prepare     here: .gpu/wheel-1..4 (the wheel in pieces), .gpu/graph
#   bash bench/gpu.sh piece K     there, calls 1-3, carrying .gpu/wheel-K: stash piece K
#   bash bench/gpu.sh run         there, call 4, carrying .gpu/wheel-4 and .gpu/graph: stash
#                                 it, join, check, install, measure (<= 400 s, rows in $OUT)
#   bash bench/gpu.sh dry-run     here: the joined pieces checked, then `run` in a scratch
#                                 venv with the cp311 wheel of the same version, on the CPU
#
# The calls follow each other within the machine's warm window (30 s), as the stash lives in
# /tmp there. .gpu/ is git-ignored: it travels only where a call names it in `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT=1.31.1
WHEEL_312=onnxruntime_gpu-$ORT-cp312-cp312-manylinux_2_28_x86_64.whl
SHA_312=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
WHEEL_311=onnxruntime_gpu-$ORT-cp311-cp311-manylinux_2_28_x86_64.whl
SHA_311=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
PIECES=4
PIECE_BYTES=$((61 * 1024 * 1024))  # 4 x 61 MiB >= 244 MiB; each call: one piece + the tree
STASH="${HEADSTART_GPU_STASH:-/tmp/headstart-gpu}"

say() { printf '%s\n' "$*" >&2; }

download() {  # python version, wheel, sha256 -> .gpu/download/WHEEL, checked
    mkdir -p .gpu/download
    if [ ! -f ".gpu/download/$2" ]; then
        python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$1" \
            --implementation cp --platform manylinux_2_28_x86_64 -d .gpu/download \
            "onnxruntime-gpu==$ORT"
    fi
    echo "$3  .gpu/download/$2" | sha256sum --check --quiet
}

prepare() {
    download 3.12 "$WHEEL_312" "$SHA_312"
    download 3.11 "$WHEEL_311" "$SHA_311"  # for the dry run
    rm -rf .gpu/wheel-* .gpu/graph
    split --bytes="$PIECE_BYTES" --numeric-suffixes=1 --suffix-length=1 \
        ".gpu/download/$WHEEL_312" .gpu/piece-
    for k in $(seq "$PIECES"); do
        mkdir -p ".gpu/wheel-$k"
        mv ".gpu/piece-$k" ".gpu/wheel-$k/$WHEEL_312.part-$k"
    done
    if ls .gpu/piece-* >/dev/null 2>&1; then say "the wheel needs more than $PIECES pieces"; exit 1; fi
    python bench/gpu_graph.py strip .gpu/graph
    for carried in .gpu/wheel-* .gpu/graph; do
        git check-ignore -q "$carried" || { say "$carried must be git-ignored"; exit 1; }
    done
    du -sh .gpu/wheel-* .gpu/graph
    say "next, on the device, one call after the other:"
    for k in $(seq $((PIECES - 1))); do say "  bash bench/gpu.sh piece $k   (carry .gpu/wheel-$k)"; done
    say "  bash bench/gpu.sh run       (carry .gpu/wheel-$PIECES and .gpu/graph)"
}

stash_piece() {  # K: copy piece K out of the work tree, which the next call replaces
    mkdir -p "$STASH"
    cp .gpu/wheel-"$1"/*.part-"$1" "$STASH/"
    ls -l "$STASH"
}

join_and_check() {  # wheel, sha256, folder of the pieces -> the wheel's path, checked
    local wheel="$3/$1" k
    for k in $(seq "$PIECES"); do
        [ -f "$3/$1.part-$k" ] || { say "piece $k is missing from $3: the machine went back" \
            "between calls (30 s); start again with piece 1"; exit 1; }
    done
    cat "$3/$1".part-* >"$wheel.joining"
    echo "$2  $wheel.joining" | sha256sum --check --quiet \
        || { say "$1: the joined pieces do not match its sha256"; exit 1; }
    mv "$wheel.joining" "$wheel"
    python3 -m zipfile -t "$wheel" >/dev/null
    say "$1: sha256 and zip check passed"
    echo "$wheel"
}

run_rows() {  # python, device, scale, wheel, image size, seconds: install, then the rows
    local python="$1" device="$2" scale="$3" wheel="$4" size="$5" budget="$6"
    local deadline=$(($(date +%s) + budget))
    export PYTHONUNBUFFERED=1 HEADSTART_CACHE="$STASH/cache" HEADSTART_BENCH_PHOTOS="$STASH"
    "$python" -m pip uninstall --yes --quiet onnxruntime 2>/dev/null || true  # same module
    # --force-reinstall: the dry run's venv sees this machine's own copies and would skip
    "$python" -m pip install --quiet --no-index --no-deps --force-reinstall "$wheel" \
        || { say "installing $wheel into $python's environment failed"; exit 1; }
    "$python" -m pip install --quiet --no-index --no-deps --force-reinstall --no-build-isolation . \
        || { say "installing headstart failed: it runs from the work tree instead"
             mkdir -p "$STASH/path" && ln -sfn "$PWD" "$STASH/path/headstart"
             export PYTHONPATH="$STASH/path"; }
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
        2>/dev/null || say "(no nvidia-smi)"
    "$python" -m pip list 2>/dev/null | grep -i -E '^(nvidia-(cudnn|cublas|cuda-runtime)|onnxruntime)' || true
    "$python" -c 'import headstart, onnxruntime as o; print(headstart.__file__, o.__file__)'
    "$python" bench/gpu_graph.py refill .gpu/graph

    local rows="$OUT_DIR/gpu-rows.md" images=$((1024 / scale)) e2e=$((2048 / scale)) repeats=5
    [ "$scale" -gt 1 ] && repeats=2
    printf '| row | settings | result | notes |\n|---|---|---|---|\n' >"$rows"
    # seconds at most, then the row and its arguments (they may override --device). A row
    # gets no more than the time left; one that fails or runs out says so and the run goes on.
    one() {
        local cap="$1" left=$((deadline - $(date +%s))) row="$2"; shift 2
        if [ "$left" -lt 15 ]; then echo "| $row $* | $device | not run: no time left | |" >>"$rows"; return; fi
        [ "$cap" -lt "$left" ] || cap="$left"
        timeout -k 10 "$cap" "$python" bench/gpu.py "$row" --device "$device" --out "$rows" \
            --repeats "$repeats" --image-size "$size" "$@" \
            || echo "| $row $* | $device | failed or timed out ($cap s) | |" >>"$rows"
    }
    # the most telling rows first: a run cut short by its time keeps those
    one 90 check
    one 150 embed --images "$e2e"
    [ "$device" = cpu ] || one 45 cosine
    one 45 ort --images "$images"
    if [ "$device" != cpu ]; then
        one 60 ort --precision fp16 --images "$images"
        one 150 embed --precision fp16 --images "$e2e"
        HEADSTART_CUDA_NHWC=1 one 45 ort --precision fp16 --images "$images"
        HEADSTART_CUDA_NHWC=1 one 45 ort --images "$images"
    fi
    HEADSTART_CUDNN_SEARCH=HEURISTIC one 45 ort --images "$images"
    for batch in 128 256; do one 45 ort --batch "$batch" --images "$images"; done
    one 45 decode --images "$images"
    if "$python" -c "import ctypes; ctypes.CDLL('libnvinfer.so.10')" 2>/dev/null; then
        one 240 ort --device tensorrt --images "$images"  # its engine build is minutes
    else
        echo "| TensorRT | - | not run: libnvinfer.so.10 is not on this machine | |" >>"$rows"
    fi
    cat "$rows"
}

case "${1:-}" in
    prepare) prepare ;;
    piece) stash_piece "${2:?piece number}" ;;
    run)  # everything it says also goes to $OUT/gpu.log, as it is said
        export OUT_DIR="${OUT:-.gpu/out}"
        mkdir -p "$OUT_DIR"
        set -o pipefail
        {
            stash_piece "$PIECES"
            wheel="$(join_and_check "$WHEEL_312" "$SHA_312" "$STASH")"
            # the venv that holds the nvidia-* wheels: preload_dlls() finds them beside it
            timeout -k 10 400 bash "$0" rows "${PYTHON:-python3}" cuda 1 "$wheel" 299 360
        } 2>&1 | tee -a "$OUT_DIR/gpu.log"
        ;;
    rows) run_rows "$2" "$3" "$4" "$5" "$6" "$7" ;;
    dry-run)
        scratch="$(mktemp -d /tmp/headstart-dry-XXXX)"
        trap 'rm -rf "$scratch"' EXIT
        for k in $(seq "$PIECES"); do cp .gpu/wheel-"$k"/*.part-"$k" "$scratch/"; done
        join_and_check "$WHEEL_312" "$SHA_312" "$scratch" >/dev/null
        rm -f "$scratch"/*.whl "$scratch"/*.part-*
        python -m venv --system-site-packages "$scratch/venv"
        export OUT_DIR="${OUT:-.gpu/dry-run}" HEADSTART_GPU_STASH="$scratch"
        mkdir -p "$OUT_DIR"
        set -o pipefail
        timeout -k 10 900 bash "$0" rows "$scratch/venv/bin/python" cpu 8 \
            ".gpu/download/$WHEEL_311" 139 840 2>&1 | tee -a "$OUT_DIR/gpu.log"
        ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
