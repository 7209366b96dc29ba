"""Serving: export a run (SavedModel + ONNX + int8 ONNX), verify the export, load any artifact, predict.

    export.py   the version folder: SavedModel for TF Serving, ONNX, int8 ONNX, class names, warmup requests
    quantize.py int8 ONNX: quantize, time against fp32, keep only when faster (the decision in int8.json)
    runtime.py  `load(path)`: one loader for .keras, a SavedModel folder or .onnx -> images in, probabilities out
    verify.py   parity Keras <-> SavedModel <-> ONNX and the int8 accuracy drop, gated by atol / int8_max_drop
    runs.py     `export_run`: what train (either backend), `python -m mtl_keras.export` and the checks share
    predict.py  the `python -m mtl_keras.predict` program
"""
