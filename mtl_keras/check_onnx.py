"""Parity check of an export: Keras model, SavedModel (TensorFlow) and ONNX (onnxruntime, CPU).

    mtl-keras check --saved_model=export/quickstart/1 --onnx=export/quickstart/1/model.onnx \
        [--keras_model=runs/quickstart/model.keras] [--check_dataset=shapes] [--atol=1e-5] [--json]

Inputs: random pixels, plus the first --num_real test images with --check_dataset. Runs `serving.verify`,
the same check train and `python -m mtl_keras.export` run: per pair of runtimes and per output the max and
mean absolute difference and the argmax agreement; with --check_dataset and a `model.int8.onnx` beside the
ONNX file, also the int8 model's test-accuracy drop per head. Exit status 0 only when every output is within
--atol, every argmax agrees and int8 loses at most --int8_max_drop points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _missing(flags) -> str | None:
    if not Path(flags.onnx).is_file():
        return f"--onnx={flags.onnx}: no such file"
    if not (Path(flags.saved_model) / "saved_model.pb").is_file():
        return f"--saved_model={flags.saved_model}: no saved_model.pb there"
    if flags.keras_model and not Path(flags.keras_model).is_file():
        return f"--keras_model={flags.keras_model}: no such file"
    return None


def main(argv: list[str]) -> int:
    import numpy as np
    from absl import logging

    import dataclasses

    from mtl_keras.data import datasets, images as images_lib
    from mtl_keras.errors import ExportError, report
    from absl import flags

    from mtl_keras.flags import data_config

    FLAGS = flags.FLAGS
    from mtl_keras.serving import export, runs, runtime, verify

    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        if problem := _missing(FLAGS):
            raise ExportError(problem)
        shape = runtime.load(FLAGS.onnx, "--onnx").shape
        images, batches = verify.random_pixels(shape, FLAGS.num_random, FLAGS.seed), None
        if FLAGS.check_dataset:
            settings = dataclasses.replace(data_config(FLAGS, FLAGS.check_dataset), download=False)
            test = datasets.prepare(settings)
            real = images_lib.fit_images(test.test.images[:FLAGS.num_real], shape).astype(np.float32)
            images = np.concatenate([images, real])
            batches = runs.labelled_batches(test.test, test.info, shape)
        result = verify.verify(FLAGS.saved_model, FLAGS.onnx, images, keras_model=FLAGS.keras_model,
                               int8=Path(FLAGS.onnx).with_name(export.INT8_FILE), labelled_batches=batches,
                               atol=FLAGS.atol, int8_max_drop=FLAGS.int8_max_drop)
    except Exception as e:  # one clear line, not a traceback
        return report("check_onnx", e)
    print(json.dumps(result.to_json(), indent=1) if FLAGS.json else result.text())
    return 0 if result.ok else 1


def cli(argv: list[str] | None = None) -> None:
    """`mtl-keras check` and `python -m mtl_keras.check_onnx`."""
    from absl import app, flags

    from mtl_keras import flags as mtl_flags

    mtl_flags.define_check_flags(flags.FLAGS)
    mtl_flags.adopt_for_help(flags.FLAGS)
    flags.mark_flags_as_required(["saved_model", "onnx"])
    app.run(lambda argv: sys.exit(main(argv)), argv=argv,
            flags_parser=mtl_flags.parser_exiting_in_one_line("check_onnx"))


if __name__ == "__main__":
    cli()
