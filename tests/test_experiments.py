"""The experiment runner: a tiny grid end to end (slow), and its table and flag helpers (fast)."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, made_once, run_module

# The Fashion-MNIST flagfiles, shrunk to seconds per run: command-line flags after the flagfile win.
GRID = "fmnist_mtl,fmnist_stl_fine,fmnist_stl_coarse"  # shipped config names
TINY = ["--dataset=shapes", "--variant=Pico/4", "--epochs=1", "--max_train_examples=256", "--batch_size=128",
        "--validation_fraction=0.02", "--nojit_compile"]  # XLA compiling costs more than 1 epoch of Pico
NAMES = ("fmnist_mtl", "fmnist_stl_fine", "fmnist_stl_coarse")


def _grid(folder):
    start = time.time()
    proc = run_module("mtl_keras.experiments", f"--grid={GRID}", "--seeds=0,1", f"--results_dir={folder / 'results'}",
                      *TINY)
    (folder / "seconds").write_text(str(time.time() - start))
    return proc


@pytest.fixture(scope="session")
def grid_run(tmp_path_factory):
    """(results folder, the runner's process, its seconds), made once per test session (`made_once`)."""
    folder, proc = made_once(tmp_path_factory, "grid", _grid)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder / "results", proc, float((folder / "seconds").read_text())


def _own_copy(grid_run, tmp_path):
    """A copy of the shared grid's results folder, for a test that runs the grid again into it."""
    return Path(shutil.copytree(grid_run[0], tmp_path / "results", symlinks=True))


def _csv_rows(out) -> dict[str, dict]:
    with open(out / "results.csv", newline="") as f:
        return {r["experiment"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_grid_trains_every_flagfile_and_seed_with_the_extra_flags(grid_run):
    out, proc, _ = grid_run
    for name in NAMES:
        for seed in (0, 1):
            run_dir = out / "runs" / name / f"seed{seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert (run_dir / "metrics.json").is_file() and (run_dir / "model.keras").is_file()
            assert (config["dataset"], config["variant"], config["epochs"]) == ("shapes", "Pico/4", 1)
            assert config["seed"] == seed
            assert config["export"] is False and config["workdir"] == str(run_dir)
    assert proc.stdout.count("=== run ") == 6 and "skip " not in proc.stdout


@pytest.mark.slow
def test_table_has_mean_and_std_per_head_and_the_stl_pair(grid_run):
    out, _, _ = grid_run
    rows = _csv_rows(out)
    pair = "fmnist_stl_fine + fmnist_stl_coarse"
    assert set(rows) == {*NAMES, pair}
    assert [rows[n]["task"] for n in (*NAMES, pair)] == ["mtl", "fine", "coarse", "stl pair"]
    mtl = rows["fmnist_mtl"]
    assert mtl["n_seeds"] == "2" and mtl["seeds"] == "0 1"
    for metric in ("fine_accuracy", "coarse_accuracy", "hierarchy_consistency"):  # from each seed's metrics.json
        values = [100 * json.loads((out / "runs" / "fmnist_mtl" / f"seed{s}" / "metrics.json").read_text())[metric]
                  for s in (0, 1)]
        assert float(mtl[f"{metric}_mean_pct"]) == pytest.approx(np.mean(values), abs=0.006)
        assert float(mtl[f"{metric}_std_pct"]) == pytest.approx(np.std(values, ddof=1), abs=0.006)
    # A single-task row has only its own head; no seed study figures for non-seed flagfiles.
    assert rows["fmnist_stl_fine"]["coarse_accuracy_mean_pct"] == rows["fmnist_stl_fine"]["seed_study_fine_pct"] == ""
    md = (out / "results.md").read_text()
    assert "| fmnist_mtl | mtl | 2 |" in md and " ± " in md
    assert "MTL minus STL" in md and f"| fmnist_mtl | {pair} | 2 |" in md


@pytest.mark.slow
def test_stl_pair_consistency_matches_the_two_models_predictions(grid_run):
    out, _, _ = grid_run
    runs = out / "runs"
    parent = np.asarray(json.loads((runs / "fmnist_mtl" / "seed0" / "classes.json").read_text())["fine_to_coarse"])
    consistency, fine_acc = [], []
    for seed in (0, 1):
        fine = np.load(runs / "fmnist_stl_fine" / f"seed{seed}" / "test_predictions.npz")["fine"]
        coarse = np.load(runs / "fmnist_stl_coarse" / f"seed{seed}" / "test_predictions.npz")["coarse"]
        consistency.append(np.mean(parent[fine] == coarse))
        fine_acc.append(json.loads((runs / "fmnist_stl_fine" / f"seed{seed}" / "metrics.json").read_text())
                        ["fine_accuracy"])
    row = _csv_rows(out)["fmnist_stl_fine + fmnist_stl_coarse"]
    assert float(row["hierarchy_consistency_mean_pct"]) == pytest.approx(100 * np.mean(consistency), abs=0.006)
    assert float(row["hierarchy_consistency_std_pct"]) == pytest.approx(100 * np.std(consistency, ddof=1), abs=0.006)
    # The pair's accuracy comes from the reloaded models: they predict what the trained ones reported.
    assert float(row["fine_accuracy_mean_pct"]) == pytest.approx(100 * np.mean(fine_acc), abs=0.006)


@pytest.mark.slow
def test_pngs_are_written(grid_run):
    out, _, _ = grid_run
    pngs = [f"curves_{n}.png" for n in NAMES] + ["mtl_vs_stl.png", "confusion_fmnist_mtl_fine.png",
                                                 "confusion_fmnist_mtl_coarse.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    header = (out / "curves_fmnist_stl_fine.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "fine_loss", "fine_accuracy", "val_fine_accuracy"} <= set(header)  # named per head


@pytest.mark.slow
def test_second_call_skips_finished_runs(grid_run, tmp_path):
    _, _, first_seconds = grid_run
    out = _own_copy(grid_run, tmp_path)
    models = sorted((out / "runs").glob("*/seed*/model.keras"))
    before = {p: p.stat().st_mtime_ns for p in models}
    start = time.time()
    proc = run_module("mtl_keras.experiments", f"--grid={GRID}", "--seeds=0,1", f"--results_dir={out}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("skip ") == 6 and "=== run " not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in models} == before and len(models) == 6  # nothing retrained
    assert time.time() - start < first_seconds / 2


@pytest.mark.slow
def test_changed_settings_on_a_finished_run_are_one_line_error(grid_run, tmp_path):
    out = _own_copy(grid_run, tmp_path)
    proc = run_module("mtl_keras.experiments", f"--grid={GRID}", "--seeds=0", f"--results_dir={out}",
                      *TINY, "--learning_rate=0.5")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "was trained with other settings (learning_rate 0.002 != 0.5)" in proc.stderr


def test_a_finished_folder_run_is_another_run_on_other_data(tmp_path, monkeypatch):
    from mtl_keras import config
    from mtl_keras.errors import ExperimentError
    from mtl_keras.experiments.runner import _check_same_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config.flat(config.make(dataset="folder", data_dir="a"))))
    _check_same_config(run_dir, config.make(dataset="folder", data_dir=str(tmp_path / "a")))  # the same folder
    with pytest.raises(ExperimentError, match=r"was trained with other settings \(data_dir '\S+/a' != '\S+/b'\)"):
        _check_same_config(run_dir, config.make(dataset="folder", data_dir="b"))


def test_seed_study_figures_sit_beside_the_seed_flagfiles():
    from mtl_keras.experiments.tables import Row, seed_study

    def row(name, task="mtl", pair=None):
        return Row(name, task, "", {}, pair)

    assert seed_study(row("seed_vit_c10_mtl_g0.3")) == (67.5, 94.3)
    assert seed_study(row("seed_resnet152_c100_stl_fine", "fine")) == (30.4, None)
    assert seed_study(row("seed_vit_c100_stl_coarse", "coarse")) == (None, 45.8)
    pair = ("seed_resnet152_c10_stl_fine", "seed_resnet152_c10_stl_coarse")
    assert seed_study(row(" + ".join(pair), "stl pair", pair)) == (66.4, 94.2)
    assert seed_study(row("fmnist_mtl")) == (None, None)


def test_deltas_are_paired_by_seed():
    from mtl_keras.experiments.tables import Row, comparisons, mean_std

    mtl = Row("m", "mtl", "k", {"fine_accuracy": {0: 0.80, 1: 0.90}, "coarse_accuracy": {0: 0.9, 1: 0.9},
                                "hierarchy_consistency": {0: 0.95, 1: 0.97}})
    pair = Row("f + c", "stl pair", "k", {"fine_accuracy": {0: 0.79, 1: 0.88, 2: 0.5},
                                          "coarse_accuracy": {0: 0.91, 1: 0.9},
                                          "hierarchy_consistency": {0: 0.9, 1: 0.9}})
    other = Row("f2 + c2", "stl pair", "other key", pair.values)
    [(m, p, deltas)] = comparisons([mtl, pair, other])
    assert (m, p) == (mtl, pair)
    assert deltas["fine_accuracy"] == pytest.approx([0.01, 0.02])  # seed 2 has no MTL run
    assert mean_std([0.01, 0.02]) == pytest.approx((0.015, np.std([0.01, 0.02], ddof=1)))
    assert mean_std([]) is None and np.isnan(mean_std([1.0])[1])


def test_extra_flags_override_the_flagfile_and_bad_ones_name_the_file(tmp_path):
    from mtl_keras.experiments import runner as experiments

    [exp] = experiments.plan([REPO / "mtl_keras/configs/fmnist_mtl.flags"], [3], tmp_path,
                             ["--epochs=1", "--dataset=shapes"])
    config = exp.configs[3]
    assert (config.optim.epochs, config.data.dataset, config.model.variant, config.run.seed) == (1, "shapes", "Mu/4", 3)
    assert config.run.workdir == str(tmp_path / "runs" / "fmnist_mtl" / "seed3") and config.serving.export is False
    with pytest.raises(experiments.ExperimentError, match="fmnist_mtl.flags: .*--gamma"):
        experiments.plan([REPO / "mtl_keras/configs/fmnist_mtl.flags"], [0], tmp_path, ["--gamma=2"])
    with pytest.raises(experiments.ExperimentError, match="matches no flagfile"):
        experiments.expand_grid(f"{tmp_path}/nothing_*.flags")
    assert experiments.expand_grid(str(REPO / "mtl_keras/configs/fmnist_*.flags"))[0].name == "fmnist_mtl.flags"


def test_cli_sets_seed_and_workdir_per_run(tmp_path):
    proc = run_module("mtl_keras.experiments", f"--grid={GRID}", f"--results_dir={tmp_path}", "--seed=1")
    assert proc.returncode == 1 and "--seed is set per run; use --seeds" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_confidence_interval_uses_student_t():
    from mtl_keras.experiments.tables import ci95

    values = [0.01, 0.02, 0.06]
    mean, half = ci95(values)
    # t(0.975, df=2) = 4.303: a 3-seed interval is 4.303 / sqrt(3) sample standard deviations wide on each side.
    assert mean == pytest.approx(0.03) and half == pytest.approx(4.303 * np.std(values, ddof=1) / np.sqrt(3))
    assert ci95([0.5]) == (0.5, pytest.approx(float("nan"), nan_ok=True)) and ci95([]) is None


def test_gamma_is_chosen_on_validation_never_on_test(tmp_path):
    from mtl_keras.experiments.tables import Row, chosen_on_validation, write_markdown

    def mtl(name, val, test, key="k"):
        return Row(name, "mtl", key, {"val_fine_accuracy": {0: val, 1: val}, "val_coarse_accuracy": {0: val, 1: val},
                                      "fine_accuracy": {0: test, 1: test}, "coarse_accuracy": {0: test, 1: test},
                                      "hierarchy_consistency": {0: 0.9, 1: 0.9}})

    best_on_val, best_on_test = mtl("g0.3", 0.80, 0.70), mtl("g0.7", 0.78, 0.75)
    alone = mtl("other", 0.5, 0.5, key="other")
    [(chosen, group), (single, _)] = chosen_on_validation([best_on_val, best_on_test, alone]).values()
    assert chosen is best_on_val and group == [best_on_val, best_on_test] and single is alone
    pair = Row("f + c", "stl pair", "k", {m: {0: 0.6, 1: 0.6} for m in
                                          ("fine_accuracy", "coarse_accuracy", "hierarchy_consistency")})
    write_markdown([best_on_val, best_on_test, pair], tmp_path / "r.md", "t", "cmd")
    md = (tmp_path / "r.md").read_text()
    assert "| g0.3 | 80.00 | – | 70.00 ± 0.00 | 70.00 ± 0.00 | **yes** |" in md
    assert "| g0.7 | 78.00 | -2.00 [-2.00, -2.00] | 75.00 ± 0.00" in md  # seed-paired difference to the chosen
    assert "| g0.3 (chosen on validation) | f + c | 2 | +10.00 [+10.00, +10.00] |" in md


def _no_training(monkeypatch):
    from mtl_keras import train

    def trained(config):
        raise AssertionError(f"trained {config.run.workdir}")

    monkeypatch.setattr(train, "run", trained)


def test_results_dir_that_is_a_file_is_one_line_before_any_training(tmp_path, monkeypatch):
    from mtl_keras.experiments import runner
    from mtl_keras.errors import MtlError

    _no_training(monkeypatch)
    blocker = tmp_path / "results"
    blocker.write_text("")  # every run failed on it, then writing the table raised FileExistsError
    with pytest.raises(MtlError, match=f"^--results_dir={blocker} cannot be used: {blocker} is not a folder$"):
        runner.run_experiments([REPO / "mtl_keras/configs/fmnist_mtl.flags"], [0], blocker, ["--dataset=shapes"])


def test_a_finished_run_with_bad_records_stops_the_grid_in_one_line_naming_it(tmp_path, monkeypatch):
    from mtl_keras import config as config_lib
    from mtl_keras.experiments import runner

    _no_training(monkeypatch)
    flagfile, results, extra = REPO / "mtl_keras/configs/fmnist_mtl.flags", tmp_path / "results", ["--dataset=shapes"]
    [exp] = runner.plan([flagfile], [0], results, extra)
    run_dir = exp.run_dir(0)
    run_dir.mkdir(parents=True)
    for name, text in (("metrics.json", "{}"),
                       ("classes.json", '{"fine": ["a"], "coarse": ["b"], "fine_to_coarse": [0]}'),
                       ("config.json", '{"epochs": 2')):
        (run_dir / name).write_text(text)
    hint = f"; delete {run_dir} to train that run again$"

    def stops(message: str) -> None:
        with pytest.raises(runner.ExperimentError, match=message + hint):
            runner.run_experiments([flagfile], [0], results, extra)

    stops(rf"^{run_dir / 'config.json'} cannot be read \(JSONDecodeError: .*\)")  # was a traceback
    (run_dir / "config.json").write_text(json.dumps(config_lib.flat(exp.configs[0])))
    stops(f"^{run_dir} has neither test_predictions.npz nor model.keras")  # was a traceback at the table
    (run_dir / "model.keras").write_text("not a model")
    stops(rf"^{run_dir / 'model.keras'} cannot be loaded \(\w+\)")


def test_a_run_failing_mid_grid_with_any_error_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch):
    from mtl_keras import train
    from mtl_keras.experiments import runner

    trained = []

    def run(config):  # the first run dies of a bug, not an MtlError; the others must still train
        trained.append(config.run.seed)
        if config.run.seed == 0:
            raise RuntimeError("out of cheese")

    monkeypatch.setattr(train, "run", run)
    [exp] = runner.plan([REPO / "mtl_keras/configs/fmnist_mtl.flags"], [0, 1], tmp_path, ["--dataset=shapes"])
    failures = runner.run_all([exp], [0, 1])
    assert trained == [0, 1] and failures == ["fmnist_mtl seed 0: RuntimeError: out of cheese"]
