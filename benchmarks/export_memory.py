"""Peak resident memory of exporting a run (SavedModel + ONNX + int8 + checks), under a watchdog.

    python benchmarks/export_memory.py --workdir=RUN [--limit_gb=10] [--result_json=FILE] [--repo=CHECKOUT]
        [EXTRA EXPORT FLAGS, e.g. --nocheck]

Runs `/usr/bin/time -v python -m mtl_keras.export --workdir=RUN --export_dir=<temporary>` and prints /usr/bin/time's
"Maximum resident set size" (the largest single process) together with the watchdog's own figure, the peak of the
SUM of resident memory over the export's whole process tree sampled every 0.2 s (so memory moved into a child
process, such as the ONNX conversion, is not hidden), and the same for proportional set size (PSS: shared library
pages counted once, i.e. the tree's physical memory). The watchdog kills the export when that sum passes
`--limit_gb`, and the script refuses to start when less than `--need_free_gb` is available: this box is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def available_gb() -> float:
    """MemAvailable from /proc/meminfo, in GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1e6
    return 0.0


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # the process ended while we looked
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_memory_gb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) summed over `pid` and its descendants, in GB. The RSS sum counts pages that two processes share
    (e.g. TensorFlow's libraries, mapped by the export and its ONNX conversion child) once per process; PSS
    divides each shared page among its processes, so the PSS sum is the tree's physical memory."""
    rss = pss = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1]) * 1000
                    rss, pss = (rss + kb, pss) if line.startswith("Rss:") else (rss, pss + kb)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return rss / 1e9, pss / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="finished training run to export")
    parser.add_argument("--limit_gb", type=float, default=10.0, help="kill the export above this (process tree)")
    parser.add_argument("--need_free_gb", type=float, default=10.0, help="refuse to start with less available")
    parser.add_argument("--timeout_s", type=int, default=1800)
    parser.add_argument("--result_json", default=None, help="also write the figures here")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose mtl_keras exports (default: this "
                        "one; another, e.g. main before a change, measures the figure before)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if available_gb() < args.need_free_gb:
        print(f"export_memory: error: only {available_gb():.1f} GB available, need {args.need_free_gb:g} "
              f"(--need_free_gb); try again when the box is quieter", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "mtl_keras.export", f"--workdir={args.workdir}",
               f"--export_dir={tmp}", "--model_name=memory", *extra]
        log = Path(tmp) / "time.txt"
        start, peak, peak_pss, killed = time.time(), 0.0, 0.0, False
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, cwd=args.repo, stderr=err, env={**os.environ, "PYTHONPATH": str(args.repo)},
                                    start_new_session=True)  # its own process group: the watchdog kills it all
            while proc.poll() is None:
                rss, pss = tree_memory_gb(proc.pid)
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
                if peak > args.limit_gb or time.time() - start > args.timeout_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.2)
            proc.wait()
        text = log.read_text()
        exported = Path(tmp, "memory", "1")
        kept = (exported / "model.int8.onnx").is_file()
        decision = exported / "assets.extra" / "int8.json"
        int8 = json.loads(decision.read_text()) if decision.is_file() else None
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    result = {"command": " ".join(cmd[2:]), "repo": str(args.repo), "exit_status": proc.returncode,
              "killed_by_watchdog": killed,
              "wall_seconds": round(time.time() - start, 1),
              "max_rss_gb_time_v": round(int(match.group(1)) / 1e6, 2) if match else None,
              "peak_tree_rss_gb_sampled": round(peak, 2),
              "peak_tree_pss_gb_sampled": round(peak_pss, 2), "int8_kept": kept, "int8_decision": int8,
              "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_1min": os.getloadavg()[0]}
    print("\n".join(line for line in text.splitlines() if not line.startswith(("\t", "Command"))
                    and ("int8" in line or "PASS" in line or "FAIL" in line or "error" in line)))
    print(json.dumps(result, indent=1))
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if proc.returncode == 0 and not killed else 1


if __name__ == "__main__":
    sys.exit(main())
