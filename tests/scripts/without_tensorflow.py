"""Runs `python -m MODULE ARGS` (or `python -c CODE`) in a process where TensorFlow cannot be imported, as on a
machine without it:

    python tests/scripts/without_tensorflow.py [--kill_after_epoch=N] mtl_keras.train --flagfile=...

The import fails from a meta-path finder rather than `sys.modules["tensorflow"] = None`: Keras tests
`"tensorflow" in sys.modules` to decide whether it runs inside tf.data, and a None entry would fool it.
--kill_after_epoch=N sends the process SIGKILL at the end of epoch N (1-based), after its history row and before
its checkpoint, as tests/scripts/killed_before_checkpoint.py does.
"""

import runpy
import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf2onnx", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _NoTensorFlow())
if sys.argv[1].startswith("--kill_after_epoch="):
    from killed_before_checkpoint import kill_before_checkpoint  # this script's folder is on sys.path

    kill_before_checkpoint(int(sys.argv.pop(1).split("=")[1]))
if sys.argv[1] == "-c":
    code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
    exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102  (python -c, as Python runs it)
else:
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
