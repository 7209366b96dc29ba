"""Serving: export a run (SavedModel + ONNX + int8 ONNX), verify the export, load any artifact, predict.

    export.py        the version folder: SavedModel for TF Serving, ONNX, int8 ONNX, class names, warmup requests
    signatures.py    the SavedModel's signatures (serving_default: float pixels; serving_bytes: encoded images ->
                     probabilities + top-k names and scores, decoded as the folder dataset does) and warmup records
    quantize.py      int8 ONNX: quantize, time against fp32, keep only when faster (the decision in int8.json)
    onnx_convert.py  the two ONNX converters (--onnx_converter): tf2onnx on the SavedModel's serving_default (in a
                     child process, bounded memory), or
                     Keras's model.export(format="onnx"); both give input image, outputs fine / coarse, metadata
    runtime.py       `load(path)`: one loader for .keras, a SavedModel folder or .onnx -> images in, probabilities out
    verify.py        parity Keras <-> SavedModel <-> ONNX and the int8 accuracy drop, gated by atol / int8_max_drop
    runs.py          `export_run`: what train (either backend), `python -m mtl_keras.export` and the checks share
    predict.py       the `python -m mtl_keras.predict` program
"""
