"""Reading CIFAR-10 from the official archive layout at full size: time, peak memory and pixel identity.

    PYTHONPATH=. python benchmarks/cifar_archive.py --npz PACK.npz [--n 50000]

PACK.npz holds CIFAR-10 training images as JPEG bytes (arrays data, offsets, labels, names). The script decodes
them with the package's image decoder, writes them as cifar-10-python.tar.gz in the archive's layout (five
training batches, test_batch, batches.meta; the pack has no test split, so test_batch repeats the first 10,000
training images), then, in a fresh process, reads it back through `--dataset=cifar10 --data_dir=...` and prints
the load time, the peak resident memory, and whether every pixel and label of the train / validation / test
splits came back as decoded (validation carved as `datasets.load` carves it). The batches are
pickled with protocol 4 (the official ones are Python 2 pickles; tests/test_cifar_archives.py covers that form).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

READ_BACK = """
import hashlib, sys, time
from mtl_keras.data import datasets
from mtl_keras.data.sources import cifar
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's across fork)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
before = peak_mb()
start = time.perf_counter()
s = datasets.load("cifar10", data_dir=sys.argv[1], validation_fraction=0.1, download=False)
seconds = time.perf_counter() - start
peak = peak_mb()
digest = hashlib.sha256()
for split in (s.train, s.val, s.test):
    for array in (split.images, split.fine, split.coarse):
        digest.update(array.tobytes())
print(f"{seconds:.2f} {before:.0f} {peak:.0f} {len(s.train)} {len(s.val)} {len(s.test)} {digest.hexdigest()}")
"""


def expected_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """The digest READ_BACK prints, from the decoded pack with the same validation carve and test batch."""
    from mtl_keras.data.datasets import carve_validation
    from mtl_keras.data.sources import cifar
    from mtl_keras.data.types import Split

    fine = labels.astype(np.int32)
    train = Split(np.ascontiguousarray(images), fine, np.asarray(cifar.CIFAR10_FINE_TO_COARSE, np.int32)[fine])
    digest = hashlib.sha256()
    for split in (*carve_validation(train, 0.1, 0), train.take(slice(0, 10000))):
        for array in (split.images, split.fine, split.coarse):
            digest.update(array.tobytes())
    return digest.hexdigest()


def decode_pack(path: str, n: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import tensorflow as tf

    from mtl_keras.data.images import decode_bytes

    pack = np.load(path)
    data, offsets, labels = pack["data"], pack["offsets"], pack["labels"]
    n = min(n or len(labels), len(labels))
    blobs = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(n)]
    ds = tf.data.Dataset.from_tensor_slices(blobs).map(lambda b: decode_bytes(b, 32), tf.data.AUTOTUNE).batch(1000)
    images = np.concatenate([b.numpy() for b in ds])
    return images, labels[:n].astype(np.int64), [str(x) for x in pack["names"]]


def write_archive(path: str, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # each row: the R, G, B planes in turn
    chunks = np.array_split(np.arange(len(images)), 5)
    members = {"batches.meta": {"label_names": names, "num_cases_per_batch": len(chunks[0]), "num_vis": 3072}}
    for i, chunk in enumerate(chunks, 1):
        members[f"data_batch_{i}"] = {"batch_label": f"training batch {i} of 5", "data": rows[chunk],
                                      "labels": labels[chunk].tolist()}
    members["test_batch"] = {"batch_label": "testing batch 1 of 1", "data": rows[:10000],
                             "labels": labels[:10000].tolist()}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            raw = pickle.dumps(content, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True, help="CIFAR-10 pack of JPEG bytes (data, offsets, labels, names)")
    parser.add_argument("--n", type=int, default=0, help="training images to use (0: all)")
    args = parser.parse_args()
    start = time.perf_counter()
    images, labels, names = decode_pack(args.npz, args.n)
    print(f"decoded {len(images)} images in {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "cifar-10-python.tar.gz")
        start = time.perf_counter()
        write_archive(archive, images, labels, names)
        print(f"wrote {archive} ({os.path.getsize(archive) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
        out = subprocess.run([sys.executable, "-c", READ_BACK, tmp], capture_output=True, text=True, check=True)
        seconds, before, peak, n_train, n_val, n_test, digest = out.stdout.split()
    same = digest == expected_digest(images, labels)
    print(f"datasets.load('cifar10', data_dir=<folder holding the archive>): {seconds} s; peak RSS {peak} MB, "
          f"{before} MB of it before loading (imports); train {n_train}, validation {n_val}, test {n_test}")
    print(f"every split's pixels and labels identical to the decoded pack: {'yes' if same else 'NO'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
