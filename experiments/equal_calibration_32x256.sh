#!/bin/bash
# Run from the repository root after `make setup`; outputs (git-ignored) under runs/i6/. Measured times: README.
# Issue 6 decisive run at equal calibration: 32 x 256 tokens for every method (SLEB and come-plus to 20 layers,
# 24-layer models by `come apply --target-layers 24` of the progressive plans). Two chains, one thread each.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
C=.venv/bin/come
CAL="--calib-samples 32 --calib-seq-len 256"
EV="--ppl wiki-passages --ppl-seq-len 512 --ppl-max-windows 20"
chain() {  # each argument: METHOD or METHOD:FLAGS (with FLAGS, here only --refit-prior zero, the folder is METHOD-zero)
  for spec in "$@"; do
    m=${spec%%:*}; flags=""; name=$m
    if [[ $spec == *:* ]]; then flags=${spec#*:}; name=$m-zero; fi
    /usr/bin/time -f "[time] $name prune wall %e s" $C prune smollm2-135m --method $m $flags --target-layers 20 $CAL \
      --out runs/i6/$name-20 --overwrite
    m=$name
    $C apply runs/i6/$m-20 --model smollm2-135m --target-layers 24 --out runs/i6/$m-24 --overwrite
    for d in 20 24; do $C eval runs/i6/$m-$d $EV --out runs/i6/$m-$d/eval --overwrite; done
  done
}
mkdir -p runs/i6
chain sleb > runs/i6/sleb.log 2>&1 &
chain "come-plus:--refit-prior zero" shortgpt come > runs/i6/rest.log 2>&1 &
chain come-plus > runs/i6/merged.log 2>&1 &  # the default (re-fit toward the merged weights)
wait
