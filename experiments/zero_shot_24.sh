#!/bin/bash
# Zero-shot at 24 layers for dense, sleb, shortgpt, come, come-plus on SmolLM2 (README, issue 6).
# Needs the plans of: come compare smollm2-135m --methods all --target-layers 20 --eval ppl --calib-samples 8
#   --calib-seq-len 256 --ppl-seq-len 512 --ppl-max-windows 20 --no-save-models --out runs/compare-20
set -ex
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
C=".venv/bin/come"
CAL="--calib-samples 8 --calib-seq-len 256"
EV="--tasks all --limit 50 --ppl wiki-passages --ppl-seq-len 512 --ppl-max-windows 20"
for m in sleb shortgpt; do  # progressive plans: the 24-layer model is a prefix of the 20-layer run
  $C apply runs/compare-20/methods/$m --model smollm2-135m --target-layers 24 --out runs/d24/$m-24 --overwrite
done
for m in come come-plus; do
  $C prune smollm2-135m --method $m --target-layers 24 $CAL --out runs/d24/$m-24 --overwrite
done
# come-plus as first built (re-fit toward zero; the default pulls toward the merged weights since session 3)
$C prune smollm2-135m --method come-plus --refit-prior zero --target-layers 24 $CAL --out runs/d24/come-plus-zero-24 \
  --overwrite
$C eval smollm2-135m $EV --out runs/d24/eval-dense --overwrite
for m in sleb shortgpt come come-plus come-plus-zero; do
  $C eval runs/d24/$m-24 --baseline runs/d24/eval-dense $EV --out runs/d24/eval-$m --overwrite
done
