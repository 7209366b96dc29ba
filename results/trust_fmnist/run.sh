#!/bin/sh
# Trust figures on Fashion-MNIST (shared 2-core box): learned / marginal / both, --calibrate, per seed.
#   sh results/trust_fmnist/run.sh 0 1 2 && python3 results/trust_table.py results/trust_fmnist
for seed in "$@"; do
  for head in learned marginal both; do
    python3 -m mtl_keras.train --config=fmnist_hierarchy/mtl_$head --calibrate --noexport \
      --seed=$seed --workdir=results/trust_fmnist/runs/$head/seed$seed
  done
done
