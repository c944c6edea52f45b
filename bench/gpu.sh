#!/usr/bin/env bash
# Embed throughput on a GPU machine without internet, in one go:
#
#   bash bench/gpu.sh [WHEELS_DIR]
#
# 1. installs what is missing from the Python wheels brought along in WHEELS_DIR (default
#    ./wheels; e.g. onnxruntime-gpu, tensorrt-cu12-libs, and headstart's dependencies),
#    without touching the network;
# 2. checks that ONNX Runtime really starts the CUDA (and, where present, TensorRT) provider;
# 3. runs bench/embed.py (it generates its JPEGs) for CUDA and TensorRT at fp32 and fp16,
#    and CUDA fp32 once more with the provider's NHWC kernels (the layout comparison);
# 4. prints one table: steady rate (a), ONNX Runtime alone (b), decoding alone (d), a/b,
#    a/min(b, d), start-up, peak RSS.
# The random-weight export needs TensorFlow once; set HEADSTART_CACHE to a folder that
# already holds the export to skip it. CUDA and cuDNN come from the system or from the
# nvidia-* wheels beside onnxruntime-gpu (headstart preloads those); onnxruntime-gpu >= 1.27
# wants CUDA 13. A file too large for one transfer may come split: NAME.part-aa, -ab, ...
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="${1:-wheels}"
export HEADSTART_CACHE="${HEADSTART_CACHE:-$PWD/.bench-cache}"
export TF_CPP_MIN_LOG_LEVEL=2
images="${BENCH_IMAGES:-64}"

# Files brought in pieces (split -b NAME NAME.part-, where one transfer is limited): a
# wheel, or the cached export (model.onnx) in HEADSTART_CACHE. Join them first.
{ find "$wheels" "$HEADSTART_CACHE" -name '*.part-aa' 2>/dev/null || true; } | while read -r first; do
    whole="${first%.part-aa}"
    [ -e "$whole" ] || cat "${whole}".part-* >"$whole"
done
if [ -d "$wheels" ]; then
    if ls "$wheels"/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
        # The CPU package ships the same `onnxruntime` module: two installed overwrite each other.
        python -m pip uninstall -y -q onnxruntime || true
        python -m pip install --no-index --find-links "$wheels" -q onnxruntime-gpu || true
    fi
    python -m pip install --no-index --find-links "$wheels" -q -e . || true
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

python - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, "providers:", ", ".join(ort.get_available_providers()))
if "CUDAExecutionProvider" not in ort.get_available_providers():
    raise SystemExit("no CUDA provider: install onnxruntime-gpu from the wheels folder")
EOF
python -c "from extractor.backbone import ensure_backbone, parse_weights; ensure_backbone(parse_weights('random'))" \
    || { echo "no cached export and no TensorFlow to make one: bring HEADSTART_CACHE along" >&2; exit 1; }

report="$(mktemp)"
run() {  # label, then bench/embed.py options
    local label="$1"; shift
    echo "== $label" | tee -a "$report"
    if python bench/embed.py --images "$images" "$@" 2>&1 | tee /dev/stderr \
        | grep -E '^\(a\)|start-up|peak RSS|^\(b\)|^\(d\)|a/b' >>"$report"; then :; else
        echo "   (failed)" >>"$report"
    fi
}
run "cuda fp32" --device cuda --precision fp32
run "cuda fp16" --device cuda --precision fp16
HEADSTART_CUDA_NHWC=1 run "cuda fp32, NHWC kernels" --device cuda --precision fp32
if python -c "import onnxruntime as o; assert 'TensorrtExecutionProvider' in o.get_available_providers()"; then
    run "tensorrt fp32" --device tensorrt --precision fp32
    run "tensorrt fp16" --device tensorrt --precision fp16
fi
echo
echo "=== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
cat "$report"
