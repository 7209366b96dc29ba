"""What a process pays before it does anything: the import time of the stacks every command starts with.

    python benchmarks/startup.py [REPEATS]    # default 5

Each stack is imported REPEATS times, each time in a fresh interpreter (the page cache warm after a first
untimed import), and the median wall and CPU seconds are printed with the installed versions. Every `mtl-keras`
command, every export's conversion child and every process of a process group pays one of these; the test
suite starts about a hundred such processes. The train and experiments commands import their stack through
`train.freeze_imported`, with the garbage collector paused (the last two lines). ml_dtypes is listed alone
because its 0.7.0 release took 0.73 CPU-seconds to import against 0.11 for 0.6.0 (BUILD_NOTES.md, "Start-up
time").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

FROZEN = "from mtl_keras.train import freeze_imported; freeze_imported()"
STACKS = {
    "ml_dtypes": ("", "import ml_dtypes"),
    "tensorflow + keras": ("tensorflow", "import tensorflow, keras"),
    "keras on jax": ("jax", "import keras, jax"),
    "mtl_keras.train (flags only)": ("tensorflow", "import mtl_keras.train"),
    # What train and experiments import before a run: the same stacks with the models, collector paused.
    "train.freeze_imported (tensorflow)": ("tensorflow", FROZEN),
    "train.freeze_imported (jax)": ("jax", FROZEN),
}
PROBE = """
import json, sys, time
t, c = time.time(), time.process_time()
exec(sys.argv[1])
wall, cpu = time.time() - t, time.process_time() - c
from importlib import metadata
versions = {}
for name in ("ml_dtypes", "numpy", "tensorflow", "keras", "jax"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps([wall, cpu, versions]))
"""


def once(code: str, backend: str) -> tuple[float, float, dict]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend:
        env["KERAS_BACKEND"] = backend
    out = subprocess.run([sys.executable, "-c", PROBE, code], env=env, capture_output=True, text=True, check=True)
    wall, cpu, versions = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu, versions


def main(repeats: int) -> None:
    for name, (backend, code) in STACKS.items():
        once(code, backend)  # warm the page cache
        runs = [once(code, backend) for _ in range(repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{name:36s} {wall:6.2f} s wall {cpu:6.2f} s CPU (median of {repeats})")
    print("versions:", json.dumps(runs[-1][2]))
    print(f"measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
