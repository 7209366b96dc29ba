"""Every config shipped in mtl_keras/configs/ parses with absl, opens with its purpose and command, and builds its
model."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "mtl_keras" / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.flags"))
# Study rows and grids in subfolders: deltas on a base flagfile, run through `mtl-keras experiments`.
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.flags"))


def _parse(path: Path, *extra: str):
    from mtl_keras import flags as mtl_flags

    return mtl_flags.config_from_args([f"--config={path.relative_to(CONFIG_DIR).with_suffix('')}", *extra])


def _comments(path: Path) -> str:
    """The comment lines of a flagfile and of the flagfiles it nests."""
    lines = path.read_text().splitlines()
    nested = [path.parent / line.split("=", 1)[1] for line in lines if line.startswith("--flagfile=")]
    return "\n".join([line for line in lines if line.startswith("#")] + [_comments(p) for p in nested])


def _info_and_shape(name: str):
    """Class counts and image shape of a dataset, without loading it."""
    from mtl_keras.data.sources import cifar, shapes
    from mtl_keras.data.types import DatasetInfo

    if name == "shapes":
        return DatasetInfo(name, shapes.FINE_NAMES, shapes.COARSE_NAMES, shapes.FINE_TO_COARSE), (32, 32, 3)
    if name in cifar.CLASSES:
        return DatasetInfo(name, *cifar.CLASSES[name]), (32, 32, 3)
    module = importlib.import_module(f"mtl_keras.data.sources.{name}")  # e.g. fashion_mnist: 28x28 grey
    return DatasetInfo(name, module.FINE_NAMES, module.COARSE_NAMES, module.FINE_TO_COARSE), (28, 28, 1)


def test_seed_grid_is_complete():
    names = {p.stem for p in CONFIGS}
    for model in ("vit", "resnet152"):
        for data in ("c10", "c100"):
            runs = ["stl_fine", "stl_coarse"] + [f"mtl_g{g}" for g in (0.1, 0.3, 0.5, 0.7, 0.9)]
            assert {f"seed_{model}_{data}_{r}" for r in runs} <= names
    assert {"quickstart", "mtl_vit_c10", "mtl_vit_c100", "mtl_resnet152_c10"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_flagfile_opens_with_purpose_and_command(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 20, "first line: a comment giving the purpose"
    comments = [line for line in lines if line.startswith("#")]
    assert any(f"mtl-keras train --config={path.stem}" in line for line in comments)
    assert all(line.startswith(("#", "--")) for line in lines if line.strip())


def _build_args(path: Path):
    """(config, DatasetInfo, image shape, norm stats) a flagfile's model is built from; a folder config is read as
    CIFAR-10 (every folder config here is a CIFAR-10 tree)."""
    from mtl_keras.models import ADAPTED_NORM

    config = _parse(path)
    if config.data.dataset == "folder":
        config = _parse(path, "--dataset=cifar10")
    info, shape = _info_and_shape(config.data.dataset)
    stats = ([120.0] * shape[2], [4000.0] * shape[2]) if config.model.model in ADAPTED_NORM else None
    return config, info, shape, stats


def _model_groups() -> list:
    """The shipped flagfiles grouped by the model they build: many differ only in settings the model does not see
    (seed, data, epochs, a stateless loss weighting's gamma), so each group builds one model and compiles it for
    each of its flagfiles' optimisation settings. ResNet-152 groups are slow (seconds per build on CPU)."""
    from mtl_keras import weightings

    groups: dict[str, list[tuple]] = {}  # key -> [(path, config, info, shape, stats), ...]
    for path in ALL_CONFIGS:
        config, info, shape, stats = args = _build_args(path)
        optim = config.optim
        state = optim if weightings.get(optim.loss_weighting).stateful else optim.loss_weighting
        key = repr((config.model, info.num_classes, shape, stats, info.fine_to_coarse, optim.mixed_precision, state))
        groups.setdefault(key, []).append((path, *args))
    return [pytest.param(members, id=f"{members[0][0].stem}+{len(members) - 1}",
                         marks=[pytest.mark.slow] if members[0][1].model.model == "resnet152" else [])
            for members in groups.values()]


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in ALL_CONFIGS])
def test_flagfile_parses(path, monkeypatch):
    monkeypatch.chdir(REPO / "tests")  # nested --flagfile paths are relative to their file, not to here
    config = _parse(path)
    if config.data.dataset == "folder":  # every folder config here is a CIFAR-10 tree, and runs on CIFAR-10 too
        assert config.data.data_dir == "data/cifar10" and "data/cifar10/COARSE/FINE/" in _comments(path)
        config = _parse(path, "--dataset=cifar10")
    assert config.data.dataset in ("shapes", "fashion_mnist", "cifar10", "cifar100"), config.data.dataset


@pytest.mark.parametrize("members", _model_groups())
def test_each_distinct_model_builds_and_compiles_for_its_flagfiles(members):
    from mtl_keras.modeling import build_and_compile, compile_model, make_optimizer

    model = None
    for path, config, info, shape, stats in members:  # parsed once, when the groups were made
        if model is None:  # the group's model, compiled for its first flagfile as train builds it
            model = build_and_compile(config.model, config.optim, info.num_classes, shape, steps_per_epoch=10,
                                      norm_stats=stats, fine_to_coarse=info.fine_to_coarse)
        else:
            compile_model(model, config.model, config.optim, info.num_classes, make_optimizer(config.optim, 10))
        expected = {h for h in ("fine", "coarse") if config.model.task in ("mtl", h)}
        assert set(model.output_names) == expected, path
        metrics = str(model.get_compile_config()["weighted_metrics"])
        assert ("top5_accuracy" in metrics) == (config.data.dataset == "cifar100" and "fine" in expected), path


PROGRAMS = {  # program -> (a flag it must list, a flag of another program it must not)
    "train": ("epochs", "saved_model"), "export": ("result_json", "epochs"), "check": ("saved_model", "epochs"),
    "predict": ("top_k", "epochs"), "experiments": ("grid", "saved_model"),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_each_program_defines_its_own_flags_only(program):
    from absl import flags

    from mtl_keras import flags as mtl_flags

    fv = flags.FlagValues()
    getattr(mtl_flags, f"define_{program}_flags")(fv)
    own, other = PROGRAMS[program]
    assert own in fv and other not in fv
    if program in ("train", "experiments"):  # every training setting is a flag of the same name
        from mtl_keras import config

        assert set(config.FIELDS) <= set(fv)


def test_help_of_the_checker_lists_its_flags_only():
    from conftest import run_module

    proc = run_module("mtl_keras.check_onnx", "--help", timeout=300)
    assert "--saved_model" in proc.stdout and "--atol" in proc.stdout
    assert "--epochs" not in proc.stdout and "--learning_rate" not in proc.stdout
