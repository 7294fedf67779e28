#!/usr/bin/env bash
# lightsum's GPU check, one script for a lent GPU machine: about 4 minutes on one GPU.
# Needs a CUDA build of torch and lightsum installed (`pip install -e .[dev]` after torch).
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs and the fit's run folder go to OUT_DIR
# Prints: the GPU; the CUDA-only tests; the hard_sigmoid cell's step time against cuDNN's LSTM; samples/s of lightsum vs a plain loop at batch 50 / 1024 /
# 8192 in both layouts (data on the device); host syncs per training step; a 1-GPU fit of
# configs/default.yaml with its wall time and test figures.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/lightsum_gpu_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python - <<'PY'
import torch, pytorch_lightning as pl
assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "lightning", pl.__version__, "|", torch.cuda.get_device_name())
PY
echo "== CUDA-only tests"
python -m pytest -q -rs tests/test_datamodule.py tests/test_synthesis.py -k "device or cuda" 2>&1 | tail -3
echo "== throughput: lightsum (seed config, flat = the original model) vs bare Lightning vs plain loop, 40k training sequences"
timeout 150 python benchmarks/overhead.py --accelerator gpu --num-samples 50000 --epochs 2 --repeats 1 \
    --cases flat:50 sequence:50 flat:1024 sequence:1024 flat:8192 sequence:8192 2>/dev/null | grep -v "it/s" || echo "(throughput run stopped at 150 s)"
echo "== hard_sigmoid cell vs fused nn.LSTM (cuDNN), one training step"
timeout 60 python benchmarks/cell_speed.py --device cuda --rounds 3 2>/dev/null || echo "(cell speed failed or timed out)"
echo "== host syncs per training step (default config, 1 epoch)"
timeout 60 python benchmarks/step_syncs.py 2>/dev/null || echo "(sync count failed or timed out)"
echo "== 1-GPU fit of configs/default.yaml, then test of its best checkpoint"
start=$(date +%s)
timeout 150 python -m lightsum fit --config configs/default.yaml --trainer.accelerator gpu --trainer.devices 1 \
    --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$out/lightning_logs" > "$out/fit.log" 2>&1 \
    || { echo "fit failed or timed out, tail of $out/fit.log:"; tail -5 "$out/fit.log"; exit 1; }
echo "fit wall time: $(( $(date +%s) - start )) s"
best=$(ls "$out"/lightning_logs/default/version_0/checkpoints/best-*.ckpt | head -1)
python -m lightsum test --config configs/default.yaml --trainer.accelerator gpu --trainer.devices 1 \
    --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$out/lightning_logs" --ckpt_path "$best" 2>&1 \
    | grep -E "test/(accuracy|recall_0|recall_1|min_recall|auroc|sequences)" || true
