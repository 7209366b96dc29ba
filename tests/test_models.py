import numpy as np
import pytest

from mtl_keras.models import build_model
from mtl_keras.models.vit import parse_variant, vit_trunk


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
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of vit"):
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
