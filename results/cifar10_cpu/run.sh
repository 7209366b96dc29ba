#!/bin/sh
# The 15-minute CPU recipe's levers on CIFAR-10, each at the same --time_budget=900 (15 min of training) on the
# carved split of the AdamW recipe that the CPU config had before these levers, cifar10_study/b_vit_mu4_e18_tta
# (the 50,000 training images as a folder tree, DATA, default
# data/cifar10; 10 % of each class held out as test and 10 % as validation with a fixed seed). One row is the
# config under the budget plus one change; --epochs=36 --warmup_epochs=2 keep the config's warmup share (1/18)
# and cap no run (about 23 epochs fit in 900 s here).
#   DATA=data/cifar10 sh results/cifar10_cpu/run.sh SEED ROW... && python3 results/cifar10_cpu/table.py
seed=$1
shift
for row in "$@"; do
  case $row in
    budget) extra="" ;;
    muon) extra="--optimizer=muon" ;;
    alt_flip) extra="--augment=alt_flip_crop" ;;
    whitened) extra="--stem_init=whitened" ;;
    batch128) extra="--batch_size=128 --learning_rate=2.8e-3" ;;
    wider) extra="--variant=Mi/4" ;;
    progressive) extra="--progressive_size=24 --progressive_share=0.5" ;;
    muon_alt_flip) extra="--optimizer=muon --augment=alt_flip_crop" ;;
    muon_alt_flip_whitened) extra="--optimizer=muon --augment=alt_flip_crop --stem_init=whitened" ;;
    muon_alt_flip_progressive) extra="--optimizer=muon --augment=alt_flip_crop --progressive_size=24 --progressive_share=0.5" ;;
    muon_alt_flip_progressive_whitened) extra="--optimizer=muon --augment=alt_flip_crop --progressive_size=24 --progressive_share=0.5 --stem_init=whitened" ;;
    *) echo "run.sh: unknown row $row" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086
  python3 -m mtl_keras.train --config=cifar10_study/b_vit_mu4_e18_tta --data_dir="${DATA:-data/cifar10}" --time_budget=900 \
    --epochs=36 --warmup_epochs=2 --noexport --seed="$seed" $extra --workdir="results/cifar10_cpu/runs/$row/seed$seed"
done
