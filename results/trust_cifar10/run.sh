#!/bin/sh
# Trust figures on CIFAR-10 with the CPU config's AdamW recipe (cifar10_study/b_vit_mu4_e18_tta): learned / marginal /
# both, --calibrate, per seed. Data: the 50,000 training images as a folder tree (DATA, default data/cifar10);
# the config carves 10 % of each class as test and 10 % as validation with a fixed seed.
#   DATA=data/cifar10 sh results/trust_cifar10/run.sh 0 && python3 results/trust_table.py results/trust_cifar10
for seed in "$@"; do
  for head in learned marginal both; do
    python3 -m mtl_keras.train --config=cifar10_study/b_vit_mu4_e18_tta --data_dir="${DATA:-data/cifar10}" --coarse_head=$head \
      --calibrate --noexport --seed=$seed --workdir=results/trust_cifar10/runs/$head/seed$seed
  done
done
