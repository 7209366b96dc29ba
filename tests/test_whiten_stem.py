"""--stem_init=whitened: the first convolution starts as a whitening filter bank of training patches (its
outputs over patches have identity covariance, unlike Keras's init), the model builds, trains a step and saves;
trunks without a first convolution on the images and bad values are refused in one line."""

import keras
import numpy as np
import pytest
from absl import flags

from mtl_keras import flags as mtl_flags
from mtl_keras.modeling import build, build_and_compile
from mtl_keras.models import whiten

NUM_CLASSES = {"fine": 10, "coarse": 3}
PAIRS = 8  # Pico/4's stem_conv0 has 16 filters: the 8 leading directions of 27 (3x3x3), each with both signs


def _correlated_images(n: int = 256, size: int = 32) -> np.ndarray:
    """Smooth random images (box-blurred noise, mixed channels) in 0-255: neighbouring pixels and channels
    correlate strongly, as in photographs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, size + 4, size + 4, 3))
    x = sum(x[:, i:i + size, j:j + size] for i in range(5) for j in range(5)) / 5
    x = x @ np.array([[1.0, 0.8, 0.6], [0.0, 0.6, 0.6], [0.0, 0.0, 0.5]])
    return np.clip(127.5 + 30 * x, 0, 255).astype("float32")


def _model(stem_init: str, images):
    cfg = mtl_flags.config_from_args(["--variant=Pico/4", f"--stem_init={stem_init}"])
    return build(cfg.model, NUM_CLASSES, images.shape[1:], stem_sample=images)


def _stem_covariance(model, images) -> np.ndarray:
    """Covariance over interior positions of stem_conv0's + filters (even channels) on the preprocessed images."""
    conv = model.get_layer("vit_Pico_4").get_layer("stem_conv0")
    out = keras.ops.convert_to_numpy(conv(images / 127.5 - 1.0))[:, 1:-1, 1:-1, 0:2 * PAIRS:2]
    return np.cov(out.reshape(-1, PAIRS), rowvar=False)


def test_whitened_stem_decorrelates_patches_where_the_default_does_not():
    images = _correlated_images()
    whitened = _model("whitened", images)
    np.testing.assert_allclose(_stem_covariance(whitened, images), np.eye(PAIRS), atol=0.1)
    kernel = whitened.get_layer("vit_Pico_4").get_layer("stem_conv0").kernel.numpy()
    np.testing.assert_array_equal(kernel[..., 1::2], -kernel[..., 0::2])  # both signs of each direction
    default = _stem_covariance(_model("default", images), images)
    assert np.abs(default - np.eye(PAIRS)).max() > 0.5


def test_whitening_filters_fill_what_fits():
    # Pico/4 with a patch stem: one 4x4 conv of 32 filters on 48-dim patches (96 whitening filters): all 32 set.
    images = _correlated_images(64, 16)
    filters = whiten.whitening_filters(images / 127.5 - 1.0, (4, 4))
    assert filters.shape == (4, 4, 3, 96)
    cfg = mtl_flags.config_from_args(["--variant=Pico/4", "--stem=patch", "--stem_init=whitened"])
    model = build(cfg.model, NUM_CLASSES, images.shape[1:], stem_sample=images)
    kernel = model.get_layer("vit_Pico_4").get_layer("patch_embed").kernel.numpy()
    np.testing.assert_allclose(kernel, filters[..., :32], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--model=resnet152", "--stem_init=whitened"], "--stem_init=whitened needs --model=vit or cct"),
    (["--stem_init=pca"], "--stem_init"),
])
def test_bad_stem_init_is_refused(args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        mtl_flags.config_from_args(args)


@pytest.mark.slow
def test_whitened_model_trains_a_step_and_saves(tmp_path):
    images = _correlated_images(16, 16)
    cfg = mtl_flags.config_from_args(["--variant=Pico/4", "--stem_init=whitened", "--nojit_compile"])
    model = build_and_compile(cfg.model, cfg.optim, NUM_CLASSES, images.shape[1:], 2, stem_sample=images)
    labels = {"fine": np.eye(10)[np.arange(16) % 10], "coarse": np.eye(3)[np.arange(16) % 3]}
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0)["fine"], model.predict(images, verbose=0)["fine"],
                               atol=1e-5)
