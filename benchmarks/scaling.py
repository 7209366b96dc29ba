"""Training images/s of one model on 2 CPU cores: 1 process x 2 cores (JAX and TensorFlow), 2 processes x 1 core
(--distribution=multi_worker, JAX), and the single-process data-parallel paths (JAX DataParallel over 2 host
devices, TensorFlow MirroredStrategy over 2 logical CPUs), with each one's scaling efficiency against 1 x 2 cores
of the same backend.

    python benchmarks/scaling.py                      # every mode, the CPU config's model on `shapes`
    python benchmarks/scaling.py --modes=one,two_processes --epochs=4 --max_train_examples=4096

Every run is `train.run` on the flags below (a subprocess per mode and process, each with its own backend and
CPU affinity). Images/s is steady state: training images of epochs 2..E over the wall time between the end of
epoch 1 and of epoch E, read from the run's TensorBoard event times (validation passes included, compilation
excluded). Efficiency = images/s / images/s of the same backend's one process (`one` for JAX, `tf_one` for
TensorFlow; the same 2 cores, so 100 % means the split costs nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--config=cifar10_study/b_vit_mu4_e18_tta", "--dataset=shapes", "--noexport", "--notta_flip"]
# mode: (backend, extra flags, processes, env)
MODES = {
    "one": ("jax", ["--distribution=none"], 1, {}),
    "two_processes": ("jax", ["--distribution=multi_worker"], 2, {}),
    "jax_data_parallel": ("jax", ["--distribution=mirrored"], 1,
                          {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
    "tf_one": ("tensorflow", ["--distribution=none"], 1, {}),
    "tf_mirrored": ("tensorflow", ["--distribution=mirrored", "--cpu_devices=2"], 1, {}),
}
BASELINE = {"jax": "one", "tensorflow": "tf_one"}  # each mode's efficiency is against its backend's one process


def worker(args: list[str]) -> None:
    """One training process: `train.run` on ARGS; prints its steady-state epoch times as JSON."""
    from mtl_keras import train
    from mtl_keras.callbacks import read_scalars  # noqa: F401  (TensorFlow's event reader)
    from mtl_keras.flags import config_from_args

    config = config_from_args(args)
    metrics = train.run(config)
    import tensorflow as tf

    events = sorted(Path(config.run.workdir).glob("tensorboard/train/events.out.tfevents.*"))
    ends: dict[int, float] = {}  # epoch -> wall time of its last scalar (an epoch writes several)
    for record in tf.data.TFRecordDataset([str(e) for e in events]):
        event = tf.compat.v1.Event.FromString(record.numpy())
        if event.summary.value:
            ends[event.step] = max(ends.get(event.step, 0.0), event.wall_time)
    times = [ends[k] for k in sorted(ends)]
    print("RESULT:" + json.dumps({"epoch_end_times": times, "metrics_keys": len(metrics)}))


def run_mode(name: str, common: list[str], root: Path) -> dict:
    backend, flags, processes, extra = MODES[name]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cpu"
    workdir = root / name
    cmd = [sys.executable, __file__, "--worker", "--", *MODEL, *common, *flags]
    if processes == 1:
        procs = [subprocess.Popen([*cmd, f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)]
    else:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen(["taskset", "-c", str(k % os.cpu_count()), *cmd, f"--workdir={workdir}",
                                   f"--job_addresses=localhost:{port}", f"--num_processes={processes}",
                                   f"--process_id={k}"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
                 for k in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"scaling: error: mode {name} failed (exit status {[p.returncode for p in procs]})")
    times = json.loads(outs[0].split("RESULT:")[-1])["epoch_end_times"]
    return {"epoch_end_times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max_train_examples", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--root", default=None, help="folder for the runs (default: a fresh temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        return worker([a for a in rest if a != "--"])
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:
        raise SystemExit(f"scaling: error: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    common = [f"--epochs={args.epochs}", f"--max_train_examples={args.max_train_examples}",
              f"--batch_size={args.batch_size}"]
    images_per_epoch = args.max_train_examples // args.batch_size * args.batch_size
    rows = {}
    root = Path(args.root or tempfile.mkdtemp(prefix="mtl_scaling_"))
    for name in args.modes.split(","):
        times = run_mode(name, common, root)["epoch_end_times"]
        rows[name] = images_per_epoch * (len(times) - 1) / (times[-1] - times[0])
        print(f"{name}: {rows[name]:.1f} images/s", flush=True)
    print(f"{'mode':<20} {'images/s':>9} {'efficiency':>10}")
    for name, rate in rows.items():
        base = rows.get(BASELINE[MODES[name][0]])
        eff = f"{rate / base:.0%}" if base else "-"
        print(f"{name:<20} {rate:9.1f} {eff:>10}")
    print(json.dumps({"images_per_second": rows, "flags": MODEL + common}))


if __name__ == "__main__":
    main()
