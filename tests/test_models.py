import numpy as np
import pytest

from mtl_keras.models import build_model
from mtl_keras.models.preprocess import channel_stats
from mtl_keras.models import cct
from mtl_keras.models.transformer import DropPath
from mtl_keras.models.vit import parse_variant, vit_trunk

PIXELS = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_two_heads_named_fine_and_coarse(stem):
    model = build_model("vit", (32, 32, 3), {"fine": 10, "coarse": 3}, variant="Pico/4", stem=stem)
    assert model.input.name == "image" or model.inputs[0].name == "image"
    out = model(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32"))
    assert set(out) == {"fine", "coarse"}
    assert tuple(out["fine"].shape) == (4, 10) and tuple(out["coarse"].shape) == (4, 3)
    np.testing.assert_allclose(np.asarray(out["fine"]).sum(-1), 1.0, rtol=1e-5)
    assert model.get_layer("fine").dtype_policy.name == "float32"


def test_single_task_model_has_one_head():
    model = build_model("vit", (32, 32, 3), {"coarse": 2}, variant="Pico/4")
    assert set(model(np.zeros((1, 32, 32, 3), "float32"))) == {"coarse"}


def test_resize_and_grey_input():
    model = build_model("vit", (28, 28, 1), {"fine": 10, "coarse": 4}, variant="Pico/4", image_size=32)
    out = model(np.zeros((2, 28, 28, 1), "float32"))
    assert tuple(out["fine"].shape) == (2, 10)


def test_variant_table():
    assert parse_variant("Mu/4") == (64, 3, 128, 4, 4)
    with pytest.raises(ValueError, match="unknown ViT variant 'Huge/4'"):
        parse_variant("Huge/4")
    with pytest.raises(ValueError, match="not divisible by patch size 5"):
        vit_trunk((32, 32, 3), "Mu/5", stem="patch")
    with pytest.raises(ValueError, match="power-of-two patch"):
        vit_trunk((24, 24, 3), "Mu/3", stem="conv")


def test_unknown_trunk_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of vit, seed_vit, resnet152, cct"):
        build_model("vgg", (32, 32, 3), {"fine": 10})


@pytest.mark.slow
def test_save_and_reload_gives_same_outputs(tmp_path):
    import keras

    model = build_model("vit", (32, 32, 3), {"fine": 10, "coarse": 3}, variant="Pico/4")
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    for k in ("fine", "coarse"):
        np.testing.assert_allclose(np.asarray(again(x)[k]), np.asarray(model(x)[k]), atol=1e-6)


@pytest.mark.parametrize("trunk,kwargs", [
    ("cct", dict(variant="Pico/3x1")),
    ("cct", dict(variant="Pico/3x2", head="seed", head_dropout=0.2)),
    ("seed_vit", dict(head="seed", head_dropout=0.2, dropout=0.5)),
    ("vit", dict(variant="Pico/4", head="seed")),
])
def test_trunks_and_heads_give_named_probabilities(trunk, kwargs):
    model = build_model(trunk, (32, 32, 3), {"fine": 10, "coarse": 3}, **kwargs)
    out = model(PIXELS)
    assert set(out) == {"fine", "coarse"} and tuple(out["coarse"].shape) == (2, 3)
    np.testing.assert_allclose(np.asarray(out["fine"]).sum(-1), 1.0, rtol=1e-5)
    assert model.get_layer("fine").dtype_policy.name == "float32"


def test_seed_vit_has_the_seed_shapes():
    model = build_model("seed_vit", (32, 32, 3), {"fine": 10, "coarse": 2}, head="seed")
    trunk = model.get_layer("seed_vit")
    assert model.get_layer("resize").output.shape[1:] == (72, 72, 3)
    assert tuple(trunk.get_layer("tokens").output.shape[1:]) == (144, 64)
    mha = [layer for layer in trunk.layers if "mha" in layer.name]
    assert len(mha) == 8 and all(m.num_heads == 4 and m.key_dim == 64 and m.dropout == 0.1 for m in mha)
    assert trunk.get_layer("block0_ln1").epsilon == 1e-6
    assert [trunk.get_layer(f"block0_mlp_dense{i}").units for i in range(2)] == [128, 64]
    assert tuple(trunk.output.shape[1:]) == (2048,)
    assert [model.get_layer(f"fine_dense{i}").units for i in range(4)] == [1024, 512, 256, 128]
    assert [model.get_layer(f"coarse_dense{i}").units for i in range(3)] == [512, 256, 128]


def test_seed_vit_normalises_with_the_given_statistics():
    images = np.random.default_rng(2).integers(0, 256, (50, 32, 32, 3)).astype("uint8")
    mean, variance = channel_stats(images, chunk=7)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0), rtol=1e-9)
    np.testing.assert_allclose(variance, images.reshape(-1, 3).var(0), rtol=1e-9)
    model = build_model("seed_vit", (32, 32, 3), {"fine": 10}, norm_stats=(mean, variance))
    x = model.get_layer("normalize")(images.astype("float32"))
    np.testing.assert_allclose(np.asarray(x).reshape(-1, 3).mean(0), 0.0, atol=1e-4)


def test_caffe_preprocess_matches_keras_applications():
    import keras

    from mtl_keras.models.resnet import CaffePreprocess

    expected = keras.applications.resnet.preprocess_input(PIXELS.copy())
    np.testing.assert_allclose(np.asarray(CaffePreprocess()(PIXELS)), np.asarray(expected), atol=1e-4)


def test_cct_variant_table_and_shapes():
    assert cct.parse_variant("7/3x1") == (7, 256, 4, 2, 3, 1)
    with pytest.raises(ValueError, match="unknown CCT variant 'Mu/4'"):
        cct.parse_variant("Mu/4")
    trunk = cct.cct_trunk((32, 32, 3), "Pico/3x2")
    assert tuple(trunk.get_layer("tokens").output.shape[1:]) == (64, 32)  # 8x8 tokens after two pools
    assert tuple(trunk.output.shape[1:]) == (32,)
    rates = [trunk.get_layer(f"block{i}_droppath1").rate for i in range(2)]
    assert rates == [0.0, 0.1]  # stochastic depth rises linearly to the last block


def test_drop_path_drops_whole_examples_only_in_training():
    layer = DropPath(0.5, seed=0)
    x = np.ones((64, 4, 8), "float32")
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    y = np.asarray(layer(x, training=True))
    per_example = y.reshape(64, -1)
    assert set(np.unique(per_example)) <= {0.0, 2.0}
    assert (per_example.min(1) == per_example.max(1)).all() and 10 < (per_example[:, 0] == 0).sum() < 54


def test_model_code_is_backend_agnostic():
    """Trunks, heads, losses and loss weightings use keras.ops only, so they run on JAX (the benchmark relies on it)."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("mtl_keras/models/*.py"), *root.glob("mtl_keras/weightings/*.py"), root / "mtl_keras/losses.py",
             root / "benchmarks/train_speed.py"]
    allowed = ("keras", "numpy", "mtl_keras", "__future__", "collections", "re", "math", "argparse", "sys",
               "time", "pathlib", "dataclasses", "importlib", "types")
    # The one TensorFlow call allowed: FAMO's mean over tf.distribute replicas, imported only on that backend.
    tensorflow_only = {("famo.py", "_replica_mean")}
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        for node in [n for n in tree.body if isinstance(n, ast.FunctionDef) and (path.name, n.name) in tensorflow_only]:
            assert "keras.backend.backend() != \"tensorflow\"" in ast.get_source_segment(text, node), node.name
            text = text.replace(ast.get_source_segment(text, node), "")
            tree.body.remove(node)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                parts = name.split(".")
                assert parts[0] in allowed, f"{path.name} imports {name}"
                # mtl_keras's other modules (data, train) import TensorFlow; config and variants (the size tables)
                # are the TF-free settings
                assert parts[0] != "mtl_keras" or parts[1] in ("models", "losses", "weightings", "config",
                                                               "variants"), \
                    f"{path.name} imports {name}"
        assert re.search(r"\btf\.", text) is None, f"{path.name} calls TensorFlow"


@pytest.mark.slow
def test_resnet152_trunk_builds_at_32px_with_seed_heads():
    model = build_model("resnet152", (28, 28, 1), {"fine": 10, "coarse": 2}, head="seed")
    assert model.get_layer("resize").output.shape[1:3] == (32, 32)  # keras.applications needs >= 32 px
    assert tuple(model.get_layer("resnet152").output.shape[1:]) == (2048,)
    out = model(np.zeros((1, 28, 28, 1), "float32"))
    assert tuple(out["fine"].shape) == (1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("trunk,kwargs", [("cct", dict(variant="Pico/3x1", loss_weighting="uncertainty")),
                                          ("seed_vit", dict(head="seed", norm_stats=([1.0, 2, 3], [4.0, 5, 6])))])
def test_new_trunks_save_and_reload(tmp_path, trunk, kwargs):
    import keras

    model = build_model(trunk, (32, 32, 3), {"fine": 10, "coarse": 3}, **kwargs)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    for k in ("fine", "coarse"):
        np.testing.assert_allclose(np.asarray(again(PIXELS)[k]), np.asarray(model(PIXELS)[k]), atol=1e-6)


def test_resized_model_is_deterministic_outside_training():
    # keras.layers.Resizing used to switch later dropout on for plain model(x) calls; `Resize` must not.
    model = build_model("cct", (32, 32, 3), {"fine": 10}, variant="Pico/3x1", image_size=40, dropout=0.5)
    np.testing.assert_array_equal(np.asarray(model(PIXELS)["fine"]), np.asarray(model(PIXELS)["fine"]))


def test_flip_average_is_mirror_invariant_keeps_names_and_survives_saving(tmp_path):
    import keras

    from mtl_keras.models.tta import with_flip_average

    model = build_model("vit", (32, 32, 3), {"fine": 10, "coarse": 3}, variant="Pico/4")
    tta = with_flip_average(model)
    assert tta.inputs[0].name == "image" and set(tta.output_names) == {"fine", "coarse"}
    out, mirrored = tta.predict(PIXELS, verbose=0), tta.predict(PIXELS[:, :, ::-1], verbose=0)
    plain = model.predict(PIXELS, verbose=0)
    for head in ("fine", "coarse"):
        np.testing.assert_allclose(out[head], mirrored[head], atol=1e-6)  # the average sees both views
        expected = (plain[head] + model.predict(PIXELS[:, :, ::-1], verbose=0)[head]) / 2
        np.testing.assert_allclose(out[head], expected, atol=1e-6)
        assert not np.allclose(out[head], plain[head], atol=1e-4)  # an untrained net is not mirror-symmetric
    tta.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(PIXELS, verbose=0)["fine"], out["fine"], atol=1e-6)


@pytest.mark.slow
def test_flip_average_exports_to_onnx_with_parity(tmp_path):
    from mtl_keras.models.tta import with_flip_average
    from mtl_keras.serving import export, verify

    tta = with_flip_average(build_model("vit", (32, 32, 3), {"fine": 10, "coarse": 3}, variant="Pico/4"))
    version = export.export(tta, str(tmp_path), "tta")
    result = verify.verify(version, version / export.ONNX_FILE, PIXELS, keras_model=tta)
    assert result.ok, result.problems
    for parity in result.comparisons:  # keras vs saved_model, saved_model vs onnx
        assert {o.name for o in parity.outputs} == {"fine", "coarse"}
        assert max(o.max_abs_diff for o in parity.outputs) < 1e-5
