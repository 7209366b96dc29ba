"""An estimate on paper, not a measurement: data-parallel scaling of the GPU configs to 8 GPUs of one host
and to 2-16 hosts, from each model's counted forward FLOPs and parameter bytes.

    python benchmarks/scaling_estimate.py [--configs=mtl_vit_c10,mtl_resnet152_c10] [--mfu=0.25] ...

Per step and device: compute = 3 x forward FLOPs x per-device batch / (peak x MFU); communication = one ring
all-reduce of the float32 gradients, 2 (n - 1) / n x bytes / bandwidth (inside a host over NVLink; across hosts
over each host's network link, the hierarchical form: reduce inside the host, all-reduce across hosts, so the
cross-host term moves the bytes once per host). Efficiency = compute / (compute + communication): no overlap of
the two, the pessimistic end; XLA overlaps part of the all-reduce with the backward pass. Weak scaling: each
device keeps the config's --batch_size (the global batch grows with the devices).
Every assumption is a flag; the defaults are an H100 SXM: 989 TFLOP/s dense bf16, 450 GB/s NVLink per
direction, one 400 Gb/s network link per host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")
CLASSES = {"cifar10": {"fine": 10, "coarse": 2}, "cifar100": {"fine": 100, "coarse": 20}}


def ring_seconds(nbytes: float, n: int, bytes_per_second: float) -> float:
    return 0.0 if n < 2 else 2 * (n - 1) / n * nbytes / bytes_per_second


def estimate(flops: float, params: int, batch: int, args) -> dict:
    compute = 3 * flops * batch / (args.peak_tflops * 1e12 * args.mfu)
    nbytes = 4 * params  # float32 gradients (mixed precision keeps float32 variables)
    nvlink, link = args.nvlink_gbs * 1e9, args.link_gbits / 8 * 1e9

    def efficiency(comm: float) -> float:
        return compute / (compute + comm)

    one_host = {n: efficiency(ring_seconds(nbytes, n, nvlink)) for n in (2, 4, 8)}
    hosts = {h: efficiency(ring_seconds(nbytes, 8, nvlink) + ring_seconds(nbytes, h, link)) for h in (2, 4, 8, 16)}
    return {"step_compute_ms": round(compute * 1e3, 3), "gradient_mb": round(nbytes / 1e6, 1),
            "gpus_one_host": {n: round(e, 3) for n, e in one_host.items()},
            "hosts_of_8_gpus": {h: round(e, 3) for h, e in hosts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mtl_vit_c10,mtl_vit_c100,mtl_resnet152_c10")
    parser.add_argument("--peak_tflops", type=float, default=989.0)
    parser.add_argument("--mfu", type=float, default=0.25, help="share of peak the step's compute reaches")
    parser.add_argument("--nvlink_gbs", type=float, default=450.0, help="GB/s per GPU and direction in a host")
    parser.add_argument("--link_gbits", type=float, default=400.0, help="Gb/s of each host's network link")
    args = parser.parse_args()

    from mtl_keras import flags as mtl_flags
    from mtl_keras.modeling import build
    from mtl_keras.models.flops import forward_flops

    rows = {}
    for name in args.configs.split(","):
        cfg = mtl_flags.config_from_args([f"--config={name}"])
        model = build(cfg.model, CLASSES[cfg.data.dataset], (32, 32, 3))  # CIFAR's pixels; the model resizes
        trunk = cfg.model.model + ("" if cfg.model.model == "resnet152" else f" {cfg.model.variant}")
        flops, params = forward_flops(model), model.count_params()
        rows[name] = {"trunk": trunk, "parameters": params, "forward_gflops": round(flops / 1e9, 4),
                      "batch_per_gpu": cfg.optim.batch_size, **estimate(flops, params, cfg.optim.batch_size, args)}
    print("ESTIMATE (not measured): " + json.dumps({"assumptions": vars(args), "configs": rows}, indent=1))


if __name__ == "__main__":
    main()
