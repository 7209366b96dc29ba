"""python tests/scripts/killed_before_checkpoint.py EPOCH TRAIN_FLAGS...: `python -m mtl_keras.train TRAIN_FLAGS`
that sends itself SIGKILL at the end of epoch EPOCH (1-based), after CSVLogger wrote the epoch's row and before
the checkpoint of that epoch is saved: the worst moment for a kill -9, hit every time (tests/test_robustness.py)."""

import os
import runpy
import signal
import sys


def kill_before_checkpoint(kill_at: int) -> None:
    """Makes the process SIGKILL itself at the end of epoch `kill_at`, before that epoch's checkpoint."""
    from mtl_keras import callbacks

    save = callbacks.Checkpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        save(self, epoch, logs)

    callbacks.Checkpoint.on_epoch_end = on_epoch_end


if __name__ == "__main__":
    kill_before_checkpoint(int(sys.argv.pop(1)))
    runpy.run_module("mtl_keras.train", run_name="__main__", alter_sys=True)
