#!/usr/bin/env bash
# --deepspeed on the GPU machine, in one go (about 2 minutes on 2 H200s): deepspeed installed from the wheels in
# .whl/ when it cannot be imported (the machine has no deepspeed and no internet), then tests/test_deepspeed_gpu.py
# (ZeRO-1/2/3 bf16 from scripts/ds_zero*_bf16.json and ZeRO-3 fp32 against torchrun + DDP on the same global batch;
# gpt2_beam.py on the ZeRO-3 checkpoint), then a table: each run's largest loss difference from DDP and the median
# ms per update of both. Logs go to $OUT when set.
#   bash bench/gpu_deepspeed.sh
# .whl/ holds deepspeed (a pure wheel built with DS_BUILD_OPS=0) and what it needs that the machine lacks (hjson,
# pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, einops, progress).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/loranlg-deepspeed}
mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
if ! python3 -c "import deepspeed" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "error: deepspeed is not installed and there is no .whl/ to install it from" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 LORANLG_DEEPSPEED_REPORT=$OUT/report.jsonl
rm -f "$LORANLG_DEEPSPEED_REPORT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch, deepspeed; print("torch", torch.__version__, "deepspeed", deepspeed.__version__, "GPUs", torch.cuda.device_count())' 2>&1 | tail -1
start=$SECONDS
python3 -m pytest -q -p no:cacheprovider tests/test_deepspeed_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -15
python3 - "$LORANLG_DEEPSPEED_REPORT" <<'EOF'
import json, os, sys
path = sys.argv[1]
rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
print("| run | GPUs | max abs loss diff vs DDP | ms/update DeepSpeed | ms/update DDP | DDP loss first -> last |")
print("| --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['run']} | {r['gpus']} | {r['max_abs_diff']:.2e} | {r['ms']:.1f} | {r['ddp_ms']:.1f} | "
          f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
EOF
echo "$((SECONDS - start)) s for the tests"
