"""Multi-process data parallelism on JAX (`--distribution=multi_worker`): the process group, who writes, and
how a lost peer ends the run in one line.

Every process runs the same command with its own process id; JAX's coordinator runs in process 0. The group
comes from --job_addresses / --num_processes / --process_id, else from Keras's KERAS_DISTRIBUTION_JOB_ADDRESSES /
_NUM_PROCESSES / _PROCESS_ID variables (`keras.distribution.initialize` reads the same ones). One DataParallel
mesh spans every process's devices; each process feeds its slice of every global batch (pipeline's `shard`).
Process 0 writes the run folder; process K > 0 writes only WORKDIR/process-K, and reads WORKDIR/checkpoints
to resume (on several machines WORKDIR must be a shared filesystem).

A dead peer stops the others in two ways: a collective fails in Python (caught: one line), or JAX's native
coordination client aborts the process (LOG(FATAL) with a stack; a dead coordinator, a peer that never came up).
The second cannot be caught in-process, so the command line runs the work in a child process (`supervise`)
and turns such an end into one line.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from mtl_keras.errors import ConfigError, RunError

ENV = {"job_addresses": "KERAS_DISTRIBUTION_JOB_ADDRESSES", "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
       "process_id": "KERAS_DISTRIBUTION_PROCESS_ID"}
_CHILD = "MTL_KERAS_PROCESS_CHILD"  # set in the supervised child: it does the work
# A killed peer is seen at the next collective (within a step); the heartbeat catches a peer that hangs
# without dying. 30 s keeps the end of a lost run under a minute.
HEARTBEAT_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Group:
    addresses: tuple[str, ...]  # the coordinator's first; all of them, or only the coordinator's
    num_processes: int
    process_id: int
    timeout: int

    def where(self, k: int) -> str:
        """'process K (HOST:PORT)' where the addresses name it, else 'process K'."""
        if k < len(self.addresses) and (len(self.addresses) > 1 or k == 0):
            return f"process {k} ({self.addresses[k]})"
        return f"process {k}"


_group: Group | None = None  # set by `initialize`, cleared by `leave`


def _value(optim, name: str):
    """(value, how the user gave it) of a group setting: the flag wins over Keras's variable."""
    given = getattr(optim, name)
    if given is not None:
        return given, f"--{name}={given}"
    raw = os.environ.get(ENV[name])
    if raw is None or not raw.strip():
        return None, None
    if name == "job_addresses":
        return raw, f"{ENV[name]}={raw}"
    try:
        return int(raw), f"{ENV[name]}={raw}"
    except ValueError:
        raise ConfigError(f"{ENV[name]}={raw} is not an integer") from None


def resolve(optim) -> Group:
    """The process group of `optim` (an OptimConfig) and the environment; ConfigError names what is wrong."""
    addresses, a_src = _value(optim, "job_addresses")
    n, n_src = _value(optim, "num_processes")
    pid, p_src = _value(optim, "process_id")
    for value, name in ((addresses, "job_addresses"), (n, "num_processes"), (pid, "process_id")):
        if value is None:
            raise ConfigError(f"--distribution=multi_worker needs --{name} or {ENV[name]} (every process: the "
                              "coordinator's HOST:PORT, the process count, its own id); see 'Scaling out'")
    hosts = tuple(a.strip() for a in addresses.split(",") if a.strip())
    bad = [a for a in hosts if not re.fullmatch(r"[^\s:]+:\d{1,5}", a)]
    if not hosts or bad:
        raise ConfigError(f"{a_src}: {bad[0] if bad else 'empty'} is not HOST:PORT")
    if n < 1:
        raise ConfigError(f"{n_src}: the job needs at least one process")
    if len(hosts) > 1 and len(hosts) != n:
        raise ConfigError(f"{a_src} lists {len(hosts)} addresses but {n_src}: give one address per process, "
                          "or only the coordinator's")
    if not 0 <= pid < n:
        raise ConfigError(f"{p_src} is out of range for {n} processes (0 to {n - 1})")
    return Group(hosts, n, pid, optim.peer_timeout)


def initialize(group: Group) -> None:
    """Joins the group (blocks until every process has, at most `group.timeout` s); before any JAX computation."""
    global _group
    import jax

    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(group.addresses[0], group.num_processes, group.process_id,
                               initialization_timeout=group.timeout, heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
    _group = group


def active() -> Group | None:
    return _group


def is_primary() -> bool:
    """Whether this process writes the run's outputs (process 0, or the only process)."""
    return _group is None or _group.process_id == 0


def shard() -> tuple[int, int]:
    """(this process's index, process count): which slice of every global batch this process feeds."""
    return (0, 1) if _group is None else (_group.process_id, _group.num_processes)


def own_folder(workdir: Path) -> Path:
    """Where this process writes: WORKDIR for process 0, WORKDIR/process-K (scratch) for the others."""
    return workdir if is_primary() else workdir / f"process-{_group.process_id}"


def gather(values: list[int]) -> list[list[int]]:
    """Every process's `values` (small non-negative integers), by process id: a collective."""
    import numpy as np
    from jax.experimental import multihost_utils

    rows = multihost_utils.process_allgather(np.asarray(values, dtype=np.int64))
    return np.asarray(rows).reshape(_group.num_processes, -1).tolist()


def same_everywhere(value: int, what: str) -> None:
    """RunError unless every process has the same `value` (e.g. the checkpoint epoch each one resumes from)."""
    if _group is None:
        return
    seen = [row[0] for row in gather([value])]
    if len(set(seen)) > 1:
        where = ", ".join(f"process {k}: {v}" for k, v in enumerate(seen))
        raise RunError(f"the processes disagree on {what} ({where}); every process must read the same --workdir "
                       "(a shared filesystem on several machines)")


def weights_digest(model) -> str:
    """sha256 of the model's weights as this process holds them."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def finish(model) -> list[str]:
    """After fit: every process's weights digest (RunError if they differ), then the group ends (a clean
    shutdown, so process 0 can evaluate and export alone) and the model's mesh is dropped."""
    global _group
    import jax
    import keras

    digest = weights_digest(model)
    # 16-bit pieces: JAX gathers integers as int32 unless x64 is on
    rows = gather([int(digest[i:i + 4], 16) for i in range(0, 64, 4)])
    digests = ["".join(f"{v:04x}" for v in row) for row in rows]
    jax.distributed.shutdown()
    keras.distribution.set_distribution(None)
    group, _group = _group, None
    if len(set(digests)) > 1:
        raise RunError("the processes ended with different weights: " +
                       ", ".join(f"{group.where(k)} {d[:12]}" for k, d in enumerate(digests)))
    return digests


def lost_peer(error: BaseException) -> RunError | None:
    """The one-line RunError for a collective that failed because a peer died; None for any other error."""
    text = str(error)
    if _group is None or not any(s in text for s in ("Gloo", "Connection reset by peer", "Connection closed")):
        return None
    others = [k for k in range(_group.num_processes) if k != _group.process_id]
    if len(others) > 1:
        try:  # blocks until the coordinator has declared the dead ones (at most the heartbeat timeout)
            from jax._src import distributed

            live = distributed.global_state.client.get_live_nodes(list(range(_group.num_processes)))
            others = [k for k in others if k not in live] or others
        except Exception:  # noqa: BLE001  (the coordinator itself is gone: any error of its client)
            others = [0]
    return RunError(_lost_line(_group, others))


def _lost_line(group: Group, lost: list[int]) -> str:
    names = " or ".join(group.where(k) for k in lost)
    return (f"lost peer {names}: it stopped during training, so {group.where(group.process_id)} stopped too; "
            "restart every process with the same command to resume from the last finished epoch")


def exit_now(status: int) -> None:
    """Ends this process without JAX's exit-time shutdown barrier, which would wait for the dead or the busy."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# --- the supervising parent -------------------------------------------------------------------------------------

_NATIVE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|\*\*\* Check failure|"
                     r"    @ +0x)")


def is_child() -> bool:
    return os.environ.get(_CHILD) == "1"


def keras_backend() -> str:
    """The backend Keras runs (or will run) on in this process, without loading Keras when it is not loaded yet:
    the supervising parent needs only this, and stays a small process. Keras's own rule (keras/src/backend/
    config.py): KERAS_BACKEND when set and not empty, else "backend" in keras.json under KERAS_HOME (default
    ~/.keras, or /tmp/.keras when the home folder is not writable), else tensorflow."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.expanduser(os.path.join(home, "keras.json"))) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return "tensorflow"
    return settings.get("backend", "tensorflow") if isinstance(settings, dict) else "tensorflow"


def follow_parent() -> None:
    """In the child: die with the supervising parent (PR_SET_PDEATHSIG), so kill -9 of the command ends its work
    too, as a lost peer. Set here rather than in a preexec_fn, which is unsafe in a process with threads."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        exit_now(1)


def diagnose(native_log: str, group: Group, status: int) -> str:
    """One line for a child that ended without a `PROG: error:` line, from the native runtime's last words."""
    if "RegisterTask" in native_log or "Barrier timed out" in native_log and "Connect" in native_log:
        return (f"not every process joined within --peer_timeout={group.timeout} s ({group.num_processes} "
                f"expected at the coordinator {group.addresses[0]}); start each with the same command and its "
                "own --process_id")
    dead = re.search(r"Task (\d+) heartbeat timeout|stopped sending heartbeats\):\s*(\d+)", native_log)
    if dead:
        return _lost_line(group, [int(dead.group(1) or dead.group(2))])
    if "leader task" in native_log or "coordination service" in native_log:
        return _lost_line(group, [0])
    how = f"signal {-status}" if status < 0 else f"exit status {status}"
    return f"{group.where(group.process_id)} stopped ({how}) without a message"


def supervise(prog: str, group: Group) -> int:
    """Runs this command again as a child that does the work; its stdout streams through, its stderr is held
    back (native runtime logs) and shown once it ends: Python's lines on success, one line on failure."""
    cmd = [sys.executable, "-m", f"mtl_keras.{prog}", *sys.argv[1:]]
    child = subprocess.Popen(cmd, env={**os.environ, _CHILD: "1"}, stderr=subprocess.PIPE, text=True,
                             errors="replace")
    tail: collections.deque[str] = collections.deque(maxlen=2000)
    try:
        for line in child.stderr:
            tail.append(line)
    except KeyboardInterrupt:
        pass
    status = child.wait()
    lines = list(tail)
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    if status == 0 or errors:
        sys.stderr.write("".join(line for line in lines if not _NATIVE.match(line) and not line.startswith(
            f"{prog}: error:")))
        if errors:
            sys.stderr.write(errors[-1])
        return status
    if any(line.startswith("Traceback") for line in lines):  # a bug: its traceback, not a guess
        start = max(i for i, line in enumerate(lines) if line.startswith("Traceback"))
        sys.stderr.write("".join(line for line in lines[start:] if not _NATIVE.match(line)))
        return status or 1
    print(f"{prog}: error: {diagnose(''.join(lines), group, status)}", file=sys.stderr)
    return 1
