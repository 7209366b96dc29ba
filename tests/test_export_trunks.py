"""Every trunk and every loss weighting exports (SavedModel + ONNX) and passes the package's checker.

Four exports cover both lists pairwise (a loss weighting changes only the layer holding its state, not the
trunk): vit + uncertainty, cct + dwa, seed_vit (input normalisation) + famo, resnet152 at 32 px (the smallest
input keras.applications accepts; 66.6 M parameters with the seed heads, the export whose ONNX conversion once
needed > 12 GB) + fixed. The quick-start export of tests/test_export.py is vit + fixed. Random weights: parity
does not need a trained model, and the checker compares Keras, SavedModel (both signatures) and ONNX.
"""

import keras
import numpy as np
import onnx
import pytest

from mtl_keras.models import build_model
from mtl_keras.serving import export, onnx_convert, verify

pytestmark = pytest.mark.slow

SHAPE = (32, 32, 3)
CASES = {
    "vit-uncertainty": ("vit", dict(variant="Pico/4", loss_weighting="uncertainty")),
    "cct-dwa": ("cct", dict(variant="Pico/3x1", loss_weighting="dwa")),
    "seed_vit-famo": ("seed_vit", dict(head="seed", loss_weighting="famo",
                                       norm_stats=([125.3, 123.0, 113.9], [3993.0, 3874.0, 4354.0]))),
    "resnet152-fixed": ("resnet152", dict(head="seed")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_trunk_and_weighting_exports_and_passes_the_checker(case, tmp_path):
    trunk, kwargs = CASES[case]
    keras.utils.set_random_seed(0)
    model = build_model(trunk, SHAPE, {"fine": 10, "coarse": 2}, **kwargs)
    names = {"fine": [f"f{i}" for i in range(10)], "coarse": ["animal", "vehicle"]}
    version = export.export(model, str(tmp_path), trunk, class_names=names)
    # seed_vit (90 MB of weights) and resnet152 (266 MB) convert in the child process, vit and cct here.
    in_child = onnx_convert._weight_bytes(version) > onnx_convert.CHILD_ABOVE_BYTES
    assert in_child == (trunk in ("seed_vit", "resnet152"))

    proto = onnx.load(str(version / export.ONNX_FILE))
    # One graph input: constants (e.g. the normalisation statistics) must not become extra ONNX inputs.
    assert [i.name for i in proto.graph.input] == ["image"]
    assert sorted(o.name for o in proto.graph.output) == ["coarse", "fine"]
    images = verify.random_pixels(SHAPE, 8, seed=1)
    result = verify.verify(version, version / export.ONNX_FILE, images, keras_model=model)
    assert result.ok, result.problems
    pairs = {c.pair: {o.name: o for o in c.outputs} for c in result.comparisons}
    assert set(pairs) == {"keras vs saved_model", "saved_model vs onnx", "serving_default vs serving_bytes"}
    for outputs in pairs.values():
        assert set(outputs) == {"fine", "coarse"}
        assert all(o.max_abs_diff < 1e-5 and o.argmax_agreement == 1.0 for o in outputs.values())
    probabilities = model.predict_on_batch(images)  # the function verify's Keras side traced, not a new trace
    assert np.allclose(probabilities["coarse"].sum(axis=1), 1.0, atol=1e-5)  # softmax heads, not logits
