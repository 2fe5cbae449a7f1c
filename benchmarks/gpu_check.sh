#!/usr/bin/env bash
# The prune-cost benchmark on a GPU, in under 10 minutes: SmolLM2 (weights on the GPU), then a randomly
# initialised Llama-3-8B-shaped model pruned with --offload always (weights stay in CPU memory and are streamed
# layer by layer), printing the same ratios as on the CPU; then the memory paths of issue 32 (docs/memory.md): the
# same prune with the weights on the GPU, streamed from the checkpoint (--stream always), and with the
# disk-backed cache (--store-device disk), which must give the same plan and weights (the script fails
# otherwise), with each one's peak CPU and GPU memory. Results: $OUT (default runs/gpu) as JSON.
set -euo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
PY=${PY:-python}
$PY benchmarks/prune_cost.py --device cuda --dtype bfloat16 --methods shortgpt,come,come-plus,sleb \
    --calib-samples 32 --calib-seq-len 512 --out "$OUT/smollm2.json"
$PY benchmarks/random_model.py tests/data/configs/llama-3-8b --out "$OUT/llama3-8b-random" --device cuda
$PY benchmarks/prune_cost.py --device cuda --dtype bfloat16 --offload always --model "$OUT/llama3-8b-random" \
    --methods shortgpt,come,come-plus --depths 28,24 --calib-samples 16 --calib-seq-len 512 \
    --out "$OUT/llama3-8b-offload.json"
$PY benchmarks/stream_memory.py --device cuda --dtype bfloat16 --method come --target-layers 24 \
    --samples 16 --seq-len 512 --out "$OUT/smollm2-stream.json"
$PY benchmarks/stream_memory.py --device cuda --dtype bfloat16 --model "$OUT/llama3-8b-random" --method come \
    --target-layers 28 --samples 16 --seq-len 512 --settings "in memory,streamed + disk cache" \
    --out "$OUT/llama3-8b-stream.json"
rm -rf "$OUT/llama3-8b-random"
