"""What README promises and no other test checks: train --help, the GPU configs' recipe, the int8 accuracy gate,
--tta_flip through train, and predict on a run's model.keras."""

import json

import numpy as np
import pytest

from conftest import REPO, predict_in_process, run_module


def test_train_help_lists_its_flags_with_their_help():
    proc = run_module("mtl_keras.train", "--help")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl's --help exits 1 after printing the usage
    assert proc.stdout.startswith("Trains a mul")  # the module's docstring, then its flags
    from mtl_keras import config

    for name in config.FIELDS:  # every setting, with its help text on the lines below
        assert f"  --{name}: " in proc.stdout or f"  --[no]{name}: " in proc.stdout, name
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["mtl_vit_c10", "mtl_vit_c100"])
def test_gpu_configs_hold_the_documented_recipe(name):
    # README: the CPU study's family and recipe sized up to ViT Ti/4 for 20 epochs, AdamW, bfloat16, flip average.
    from mtl_keras import flags as mtl_flags

    cfg = mtl_flags.config_from_args([f"--flagfile={REPO / 'mtl_keras' / 'configs' / f'{name}.flags'}"])
    assert (cfg.model.model, cfg.model.variant, cfg.model.stem, cfg.model.tta_flip) == ("vit", "Ti/4", "conv", True)
    assert (cfg.optim.optimizer, cfg.optim.lr_schedule, cfg.optim.epochs) == ("adamw", "cosine", 20)
    assert cfg.optim.mixed_precision == "bfloat16" and cfg.data.augment == "flip_crop"
    assert cfg.data.dataset == name.removeprefix("mtl_vit_c").join(("cifar", "")) and cfg.model.task == "mtl"


def test_an_int8_drop_beyond_the_limit_fails_the_verification():
    from mtl_keras.serving import verify

    same = {"fine": np.eye(3, dtype=np.float32)}
    parity = [verify.compare(same, same, 1e-5)]

    def verification(drop):
        return verify.Verification(parity, {"fine": {"fp32_accuracy": 0.60, "int8_accuracy": 0.60 - drop / 100,
                                                     "drop_points": drop}}, int8_max_drop=1.0)

    assert verification(0.9).ok and verification(0.9).metrics()["onnx_parity_ok"] is True
    failed = verification(1.5)
    # metrics.json's onnx_parity_ok is what fails train (RunError) and the problems are its one line.
    assert not failed.ok and failed.metrics()["onnx_parity_ok"] is False
    assert failed.problems == ["int8 fine: -1.5 points > 1.0"] and failed.text().endswith(
        "FAIL: int8 fine: -1.5 points > 1.0")
    assert "int8 fine: test accuracy 60.00% -> 58.50% (-1.50 points)" in failed.text()
    # An int8 model that scores higher reads as a gain, not as a doubled minus sign.
    assert "int8 fine: test accuracy 60.00% -> 60.02% (+0.02 points)" in verification(-0.02).text()


@pytest.mark.slow
def test_tta_flip_reaches_the_trained_and_saved_model(trained_run, tmp_path):
    # A flipped-view average is unchanged by a horizontal flip of its input; a plain model is not. The plain one
    # is the shared quick-start run's (its config leaves --tta_flip off).
    import keras

    from mtl_keras import config, train

    work = tmp_path / "tta"
    train.run(config.make(dataset="shapes", variant="Pico/4", epochs=1, batch_size=64, max_train_examples=128,
                          tta_flip=True, export=False, workdir=str(work), jit_compile=False))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    for tta, path in ((True, work / "model.keras"), (False, trained_run.work / "model.keras")):
        model = keras.saving.load_model(path)
        a, b = model.predict(x, verbose=0), model.predict(x[:, :, ::-1], verbose=0)
        diff = max(np.abs(a[h] - b[h]).max() for h in ("fine", "coarse"))
        assert bool(diff < 1e-5) == tta, (tta, diff)


@pytest.mark.slow
def test_predict_reads_a_runs_model_keras(trained_run, tmp_path, capsys):
    import tensorflow as tf

    from mtl_keras.data.sources import shapes

    images, fine, _ = shapes.generate(2, seed=4)
    for i, image in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    status, out, err = predict_in_process([f"--model={trained_run.work / 'model.keras'}", "--json", "--top_k=1",
                                           tmp_path / "0.png", tmp_path / "1.png"], capsys)
    assert status == 0, err[-2000:]
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    for r in results:  # class names from the run's classes.json
        assert r["fine"][0]["class"] in shapes.FINE_NAMES and r["coarse"][0]["class"] in shapes.COARSE_NAMES
