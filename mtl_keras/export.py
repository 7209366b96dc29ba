"""Exports a finished run for serving and verifies the export (the same `serving.runs.export_run` as train).

    mtl-keras export --workdir=runs/quickstart [--export_dir=export --model_name=NAME --version=N]

Writes EXPORT_DIR/MODEL_NAME/VERSION (SavedModel, model.onnx, model.int8.onnx; see serving/export.py) and,
unless --nocheck, checks Keras <-> SavedModel <-> ONNX parity (--atol) and the int8 drop (--int8_max_drop).
--result_json=FILE also writes the result (artifacts, metrics.json entries); exit status 1 on any failure.
"""

from __future__ import annotations

import sys
from pathlib import Path


def default_model_name(workdir: str) -> str:
    """--model_name's default: the run folder's own name, resolved (RUN/checkpoints/.. is RUN, not '..', which
    put the version outside --export_dir) and held to --model_name's rule."""
    from mtl_keras.errors import ExportError
    from mtl_keras.flags import valid_model_name

    name = Path(workdir).expanduser().resolve().name
    if not valid_model_name(name):
        raise ExportError(f"--workdir={workdir}: its folder name {name!r} cannot name the model; pass "
                          "--model_name=NAME (letters, digits, '_' or '-')")
    return name


def main(argv: list[str]) -> int:
    from absl import logging

    from mtl_keras import atomic
    from mtl_keras.errors import ExportError, report
    from absl import flags

    FLAGS = flags.FLAGS
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        name = FLAGS.model_name if FLAGS["model_name"].present else default_model_name(FLAGS.workdir)
        from mtl_keras.serving.runs import export_run

        result = export_run(FLAGS.workdir, export_dir=FLAGS.export_dir, model_name=name, version=FLAGS.version,
                            int8=FLAGS.int8, check=FLAGS.check, atol=FLAGS.atol, int8_max_drop=FLAGS.int8_max_drop,
                            num_random=FLAGS.num_random, num_real=FLAGS.num_real, top_k=FLAGS.top_k,
                            onnx_converter=FLAGS.onnx_converter)
        if FLAGS.result_json:
            atomic.write_json(FLAGS.result_json, result)
        if not result["ok"]:
            raise ExportError("export check failed: " + "; ".join(result["metrics"]["onnx_parity_problems"]))
    except Exception as e:  # one clear line for the user, not a traceback
        return report("export", e)
    except KeyboardInterrupt:
        from mtl_keras.errors import interrupted

        return interrupted("export", "its temporary version folder is removed; export again")
    print(f"exported {result['artifacts']['saved_model']}")
    for key in ("onnx", "onnx_int8"):
        if key in result["artifacts"]:
            print(f"  {result['artifacts'][key]}")
    return 0


def cli(argv: list[str] | None = None) -> None:
    """`mtl-keras export` and `python -m mtl_keras.export`."""
    from absl import app, flags

    from mtl_keras import flags as mtl_flags

    mtl_flags.define_export_flags(flags.FLAGS)
    mtl_flags.adopt_for_help(flags.FLAGS)
    app.run(lambda argv: sys.exit(main(argv)), argv=argv,
            flags_parser=mtl_flags.parser_exiting_in_one_line("export"))


if __name__ == "__main__":
    cli()
