"""Runs a grid of flagfiles x seeds, then writes a results table (mean ± std over seeds) and plots.

    python -m mtl_keras.experiments --grid='configs/fmnist_*.flags' --seeds=0,1,2 --results_dir=results/fashion_mnist
    python -m mtl_keras.experiments --grid=configs/a.flags,configs/b.flags --seeds=0,1 --results_dir=/tmp/r --epochs=1

Every run trains in-process (one TensorFlow start for the whole grid) with `train.run` in
RESULTS_DIR/runs/<flagfile stem>/seed<k>, with --noexport; training flags given here override the flagfiles.
Resumable: a run whose metrics.json exists is skipped (after checking it was trained with the same settings); an
unfinished one is started again, and train.run picks it up from its last epoch checkpoint.
Writes RESULTS_DIR/results.md and results.csv (results_table.py), curves_<stem>.png (+ the mean history as .csv),
mtl_vs_stl.png and, per MTL experiment, confusion_<stem>_{fine,coarse}.png (reports.py draws curves and matrices).
RESULTS_DIR/runs/ holds models and checkpoints: keep it out of git.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import re
import sys
from pathlib import Path

import numpy as np

from mtl_keras.config import TrainConfig
from mtl_keras.results_table import (COMPUTE, HEADS, METRICS, VAL_METRICS, Row, markdown_table, write_csv,
                                     write_markdown)


class ExperimentError(RuntimeError):
    """The grid cannot run; the message is one line naming the flag or file."""


@dataclasses.dataclass
class Experiment:
    name: str  # the flagfile's stem
    flagfile: Path
    configs: dict[int, TrainConfig]  # seed -> resolved run configuration

    @property
    def task(self) -> str:
        return next(iter(self.configs.values())).task

    @property
    def key(self) -> str:
        return pair_key(next(iter(self.configs.values())))

    def run_dir(self, seed: int) -> Path:
        return Path(self.configs[seed].workdir)


def expand_grid(grid: str) -> list[Path]:
    """Flagfiles named by a comma-separated list of paths and globs, in order, without duplicates."""
    paths: list[Path] = []
    for item in filter(None, (s.strip() for s in grid.split(","))):
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches or not Path(matches[0]).is_file():
            raise ExperimentError(f"--grid: {item!r} matches no flagfile")
        paths += [Path(m) for m in matches if Path(m) not in paths]
    if not paths:
        raise ExperimentError("--grid is empty; give flagfiles or globs, e.g. --grid='configs/fmnist_*.flags'")
    return paths


def plan(flagfiles: list[Path], seeds: list[int], results_dir: Path, extra_args: list[str]) -> list[Experiment]:
    """Resolves every flagfile x seed into a TrainConfig up front, so a bad flag fails before any training."""
    from absl import flags

    from mtl_keras.flags import config_from_args

    experiments = []
    for path in flagfiles:
        if any(e.name == path.stem for e in experiments):
            raise ExperimentError(f"--grid: two flagfiles named {path.stem!r}; their runs would share a folder")
        configs = {}
        for seed in seeds:
            args = [f"--flagfile={path}", "--noexport", *extra_args,
                    f"--seed={seed}", f"--workdir={results_dir / 'runs' / path.stem / f'seed{seed}'}"]
            try:
                configs[seed] = config_from_args(args)
            except flags.Error as e:
                raise ExperimentError(f"{path}: {e}") from None
        experiments.append(Experiment(path.stem, path, configs))
    return experiments


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    """A finished run must have been trained with today's settings, or the table would mix two experiments."""
    saved_file = run_dir / "config.json"
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text())
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # the same JSON types as the saved file
    diff = [f"{k} {saved[k]!r} != {wanted[k]!r}" for k in sorted(saved.keys() & wanted.keys()) if saved[k] != wanted[k]]
    if diff:
        raise ExperimentError(f"{run_dir} was trained with other settings ({'; '.join(diff[:3])}); delete it or "
                              f"choose another --results_dir")


def run_all(experiments: list[Experiment], seeds: list[int]) -> list[str]:
    """Trains every unfinished run with `train.run`; returns one line per failed run."""
    import keras

    from mtl_keras import data, train

    failures = []
    # Seed-major order: an interrupted grid already has whole seeds of every experiment to compare.
    for seed in seeds:
        for exp in experiments:
            run_dir = exp.run_dir(seed)
            if (run_dir / "metrics.json").is_file():
                _check_same_config(run_dir, exp.configs[seed])
                print(f"skip {exp.name} seed {seed}: {run_dir / 'metrics.json'} exists", flush=True)
                continue
            print(f"\n=== run {exp.name} seed {seed} -> {run_dir}", flush=True)
            keras.backend.clear_session()  # free the previous run's graphs; in-process runs would grow otherwise
            try:
                train.run(exp.configs[seed])
            except (train.RunError, data.DatasetError) as e:
                failures.append(f"{exp.name} seed {seed}: {e}")
                print(f"FAILED {failures[-1]}", flush=True)
    return failures


def last_validation(history_csv: Path, task: str) -> dict[str, float]:
    """Validation accuracy per head at the last epoch of history.csv: the fallback for runs whose metrics.json
    predates train's `val_*_accuracy` entries (which hold the final weights, EMA included)."""
    from mtl_keras import reports

    if not history_csv.is_file():
        return {}
    history = reports.read_history(history_csv)
    names = {h: f"val_{h}_accuracy" if task == "mtl" else "val_accuracy" for h in HEADS if task in ("mtl", h)}
    return {f"val_{h}_accuracy": float(history[col][-1]) for h, col in names.items() if len(history.get(col, ()))}


def load_test_split(config: TrainConfig, cache: dict):
    """The test split (and info) of `config.dataset`, loaded once per dataset."""
    from mtl_keras import data

    key = (config.dataset, config.data_dir, config.fashion_mnist_dir, config.folder_image_size,
           config.folder_test_fraction)
    if key not in cache:
        splits = data.load_for(config, validation_fraction=0.0)
        cache[key] = (splits.test, splits.info)
    return cache[key]


def predictions(run_dir: Path, test, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Predicted class per head on the test split from the run's model.keras; cached in test_predictions.npz."""
    cached, model_file = run_dir / "test_predictions.npz", run_dir / "model.keras"
    if cached.is_file() and cached.stat().st_mtime >= model_file.stat().st_mtime:  # not from an older model
        with np.load(cached) as f:
            return dict(f)
    import keras

    from mtl_keras import data, losses, models  # noqa: F401  (registers the custom layers for loading)

    model = keras.saving.load_model(model_file, compile=False)
    images = data.fit_images(test.images, model.input_shape[1:]).astype(np.float32)
    probs = model.predict(images, batch_size=batch_size, verbose=0)
    preds = {head: np.asarray(p).argmax(-1).astype(np.int32) for head, p in probs.items()}
    np.savez(cached, **preds)
    return preds


def pair_key(config: TrainConfig) -> str:
    """What an MTL run and its STL fine / coarse pair share: everything but task, loss mix, seed and paths."""
    ignore = {"task", "gamma", "loss_weighting", "head_dropout", "seed", "workdir", "model_name", "export",
              "export_dir", "int8", "check"}
    return json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k not in ignore}, sort_keys=True)


def stl_pairs(experiments: list[Experiment]) -> list[tuple[Experiment, Experiment]]:
    """(fine-only, coarse-only) experiments whose settings are otherwise the same."""
    return [(f, c) for f in experiments if f.task == "fine" for c in experiments
            if c.task == "coarse" and f.key == c.key]


def collect(experiments: list[Experiment], seeds: list[int]) -> tuple[list[Row], dict]:
    """Table rows (experiments, then STL pairs) and, per MTL experiment, pooled test labels and predictions."""
    rows, confusion, cache = [], {}, {}
    done = {e.name: [s for s in seeds if (e.run_dir(s) / "metrics.json").is_file()] for e in experiments}
    for exp in experiments:
        values: dict[str, dict[int, float]] = {}
        for seed in done[exp.name]:
            metrics = json.loads((exp.run_dir(seed) / "metrics.json").read_text())
            metrics = {**last_validation(exp.run_dir(seed) / "history.csv", exp.task), **metrics}
            for key in (*METRICS, *VAL_METRICS, *(k for k, _, _ in COMPUTE)):
                if key in metrics:
                    values.setdefault(key, {})[seed] = float(metrics[key])
        rows.append(Row(exp.name, exp.task, exp.key, values))
        if exp.task == "mtl" and done[exp.name]:
            test, info = load_test_split(exp.configs[done[exp.name][0]], cache)
            preds = [predictions(exp.run_dir(s), test) for s in done[exp.name]]
            confusion[exp.name] = {h: (np.tile(getattr(test, h), len(preds)), np.concatenate([p[h] for p in preds]),
                                       getattr(info, f"{h}_names"), len(preds)) for h in HEADS}
    for fine, coarse in stl_pairs(experiments):
        values = {m: {} for m in METRICS}
        for seed in (s for s in done[fine.name] if s in done[coarse.name]):
            test, info = load_test_split(fine.configs[seed], cache)
            pf, pc = predictions(fine.run_dir(seed), test)["fine"], predictions(coarse.run_dir(seed), test)["coarse"]
            values["fine_accuracy"][seed] = float(np.mean(pf == test.fine))
            values["coarse_accuracy"][seed] = float(np.mean(pc == test.coarse))
            # Consistent where the coarse model's class is the parent of the fine model's class.
            values["hierarchy_consistency"][seed] = float(np.mean(np.asarray(info.fine_to_coarse)[pf] == pc))
        if values["fine_accuracy"]:
            rows.append(Row(f"{fine.name} + {coarse.name}", "stl pair", fine.key, values, (fine.name, coarse.name)))
    return rows, confusion


def mtl_vs_stl_png(rows: list[Row], out_png: Path) -> None:
    """Bars per experiment for fine / coarse accuracy and hierarchy consistency, error bars ±1 std over seeds."""
    from matplotlib.figure import Figure  # not pyplot: no global backend, works without a display
    from matplotlib.patches import Rectangle

    colors = {"mtl": "tab:blue", "fine": "tab:orange", "coarse": "tab:orange", "stl pair": "tab:green"}
    fig = Figure(figsize=(5.5 * len(METRICS), 5), dpi=100, layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(METRICS)), METRICS):
        # Accuracy compares single runs (a pair's accuracies are its STL rows'); consistency MTL vs pairs.
        shown = [r for r in rows if r.stats(metric) and (r.task != "stl pair" or metric == METRICS[2])]
        if not shown:
            ax.set_axis_off()
            continue
        mean = np.array([100 * r.stats(metric)[0] for r in shown])
        std = np.nan_to_num([100 * r.stats(metric)[1] for r in shown])
        ax.bar(range(len(shown)), mean, yerr=std, capsize=4, color=[colors[r.task] for r in shown])
        for i, (m, s) in enumerate(zip(mean, std)):
            ax.annotate(f"{m:.1f}", (i, m + s), ha="center", va="bottom", fontsize=8)
        low = max(0.0, float(np.floor((mean - std).min() - 3)))  # zoom in: the differences are a few points
        ax.set_ylim(low, min(100.0, float((mean + std).max()) + 2))
        ax.set_xticks(range(len(shown)), [r.experiment.replace(" + ", "\n+ ") for r in shown], rotation=30,
                      ha="right", fontsize=8)
        ax.set(title=metric.replace("_", " "), ylabel="test split %" + (f" (axis from {low:.0f})" if low else ""))
        ax.grid(axis="y", alpha=0.3)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange", "tab:green")]
    fig.legend(handles, ["MTL", "STL", "STL pair"], loc="outside upper right", ncol=3)
    fig.suptitle("MTL vs STL: mean ± std over seeds")
    fig.savefig(out_png)


def mean_history(history_csvs: list[Path], task: str, out_csv: Path) -> Path:
    """Writes the mean over seeds of the runs' history.csv files to `out_csv`, columns named per head as in an
    MTL run (a one-head model logs plain loss / accuracy); epochs are cut to the shortest run."""
    from mtl_keras import reports

    runs = []
    for path in history_csvs:
        history = reports.read_history(path)  # keeps the last row of epochs a resumed run repeats
        runs.append({name if task == "mtl" else re.sub(r"^(val_)?(loss|accuracy)$", rf"\g<1>{task}_\2", name): v
                     for name, v in history.items() if name != "epoch"})
    epochs = min(len(next(iter(r.values()))) for r in runs)
    columns = [c for c in runs[0] if all(c in r for r in runs)]
    with open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *columns])
        writer.writerows([e, *(f"{np.mean([r[c][e] for r in runs]):.6g}" for c in columns)] for e in range(epochs))
    return out_csv


def write_outputs(experiments: list[Experiment], seeds: list[int], results_dir: Path, command: str) -> list[Row]:
    """results.md, results.csv and the PNGs from whatever runs have finished; returns the table rows."""
    from mtl_keras import reports

    results_dir.mkdir(parents=True, exist_ok=True)
    rows, confusion = collect(experiments, seeds)
    write_csv(rows, results_dir / "results.csv")
    write_markdown(rows, results_dir / "results.md", results_dir.name, command)
    for exp in experiments:
        histories = [exp.run_dir(s) / "history.csv" for s in seeds if (exp.run_dir(s) / "history.csv").is_file()]
        if histories:
            mean_csv = mean_history(histories, exp.task, results_dir / f"curves_{exp.name}.csv")
            reports.learning_curves_png(mean_csv, results_dir / f"curves_{exp.name}.png",
                                        f"{exp.name}: mean over {len(histories)} seed(s)")
    mtl_vs_stl_png(rows, results_dir / "mtl_vs_stl.png")
    for name, heads in confusion.items():
        for head, (y_true, y_pred, names, n) in heads.items():
            reports.confusion_matrix_png(y_true, y_pred, names, results_dir / f"confusion_{name}_{head}.png",
                                         f"{name}, {head} head, {n} seed(s) pooled")
    return rows


def run_experiments(flagfiles: list[Path], seeds: list[int], results_dir: str | Path, extra_args: list[str],
                    command: str = "") -> list[str]:
    """Plans, trains (resumably) and reports the grid; returns one line per failed run."""
    results_dir = Path(results_dir).expanduser()
    experiments = plan(flagfiles, seeds, results_dir, extra_args)
    failures = run_all(experiments, seeds)
    rows = write_outputs(experiments, seeds, results_dir, command)
    print("\n" + markdown_table(rows))
    print(f"wrote {results_dir / 'results.md'}, {results_dir / 'results.csv'} and PNGs")
    return failures


def main(argv: list[str]) -> None:
    from absl import logging

    from mtl_keras import flags as mtl_flags

    logging.set_verbosity(logging.WARNING)
    flags_ = mtl_flags.FLAGS
    if len(argv) > 1:
        sys.exit(f"experiments: unexpected arguments {argv[1:]}; flags look like --name=value")
    if not flags_.grid or not flags_.results_dir:
        sys.exit("experiments: error: --grid and --results_dir are required, e.g. --grid='configs/fmnist_*.flags' "
                 "--results_dir=results/fashion_mnist")
    for name, instead in (("seed", "--seeds"), ("workdir", "--results_dir")):
        if flags_[name].present:
            sys.exit(f"experiments: error: --{name} is set per run; use {instead}")
    seeds = [int(s) for s in flags_.seeds]
    extra = mtl_flags.given_train_flags()
    command = " ".join(["python -m mtl_keras.experiments", f"--grid='{flags_.grid}'",
                        f"--seeds={','.join(flags_.seeds)}", f"--results_dir={flags_.results_dir}", *extra])
    try:
        failures = run_experiments(expand_grid(flags_.grid), seeds, flags_.results_dir, extra, command)
    except ExperimentError as e:
        sys.exit(f"experiments: error: {e}")
    if failures:
        sys.exit(f"experiments: {len(failures)} run(s) failed (rerun to retry them): " + " | ".join(failures))


if __name__ == "__main__":
    from absl import app

    import mtl_keras.flags  # noqa: F401  (defines the flags before absl parses argv)

    app.run(main)
