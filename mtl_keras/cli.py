"""`mtl-keras SUBCOMMAND ...`: one command for the package's programs, each also `python -m mtl_keras.X`.

Imports a subcommand's module only once it is chosen, so `mtl-keras configs` starts without TensorFlow.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with a `cli(argv)`, what it does)
COMMANDS = {
    "train": ("mtl_keras.train", "train a model from a config (--config=NAME|PATH), evaluate, export and check it"),
    "export": ("mtl_keras.export", "export a finished run (SavedModel + ONNX) and check the export"),
    "predict": ("mtl_keras.predict", "classify image files with an exported model"),
    "check": ("mtl_keras.check_onnx", "compare an export's SavedModel, ONNX and Keras outputs"),
    "experiments": ("mtl_keras.experiments.__main__", "train a grid of configs x seeds and tabulate the results"),
    "configs": ("mtl_keras.flagfiles", "list the shipped configs; show NAME; copy NAME DEST"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(["usage: mtl-keras SUBCOMMAND [FLAGS]   (mtl-keras SUBCOMMAND --help lists its flags)", "",
                      "subcommands:", *lines])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name in ("--version", "-V"):
        from mtl_keras import __version__

        print(f"mtl-keras {__version__}")
        return 0
    if name not in COMMANDS:
        print(f"mtl-keras: error: unknown subcommand {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "configs":
        return module.command(rest)
    if name == "predict":
        return module.main([f"mtl-keras {name}", *rest])
    module.cli([f"mtl-keras {name}", *rest])  # absl's app.run: exits itself
    return 0


def entry() -> int:
    """The console script: `mtl-keras configs | head` ends quietly when head closes the pipe."""
    try:
        return main()
    except BrokenPipeError:
        sys.stdout = None  # the interpreter's final flush would fail again
        return 0


if __name__ == "__main__":
    sys.exit(entry())
