"""The grid runner: a grid of flagfiles x seeds, trained resumably, then a results table (mean ± std over seeds)
and plots.

    mtl-keras experiments --grid='fmnist_*' --seeds=0,1,2 --results_dir=results/fashion_mnist
    mtl-keras experiments --grid=my/a.flags,my/b.flags --seeds=0,1 --results_dir=/tmp/r --epochs=1

Every run trains in-process (one TensorFlow start for the whole grid) with `train.run` in
RESULTS_DIR/runs/<flagfile stem>/seed<k>, with --noexport; training flags given here override the flagfiles.
Resumable: a run whose metrics.json exists is skipped (after checking it was trained with the same settings); an
unfinished one is started again, and train.run picks it up from its last epoch checkpoint.
Bad runs: before any training, every finished run's records are read (`check_finished`); one that cannot be
(a corrupt metrics.json / config.json / classes.json / test_predictions.npz, neither predictions nor
model.keras) stops the grid with one line naming the run and what to delete, as a run trained with other
settings does: going on would leave it out of the table without a word. A run that fails while training is
reported and the grid goes on (the failures are listed at the end, exit status 1; rerun to retry them).
Writes RESULTS_DIR/results.md and results.csv (tables.py), curves_<stem>.png (+ the mean history as .csv),
mtl_vs_stl.png (plots.py) and, per MTL experiment, confusion_<stem>_{fine,coarse}.png (reports.py draws curves
and matrices).
RESULTS_DIR/runs/ holds models and checkpoints: keep it out of git.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from pathlib import Path

import numpy as np

from mtl_keras import config as config_lib
from mtl_keras import evaluate
from mtl_keras.config import TrainConfig
from mtl_keras.errors import ExperimentError, MtlError
from mtl_keras.experiments import records
from mtl_keras.experiments.plots import mean_history, mtl_vs_stl_png
from mtl_keras.experiments.tables import (COMPUTE, HEADS, METRICS, RESULTS_HEADER, TRUST, VAL_METRICS, Row,
                                          markdown_table, write_csv, write_markdown)


@dataclasses.dataclass
class Experiment:
    name: str  # the flagfile's stem
    flagfile: Path
    configs: dict[int, TrainConfig]  # seed -> resolved run configuration

    @property
    def task(self) -> str:
        return next(iter(self.configs.values())).model.task

    @property
    def key(self) -> str:
        return pair_key(next(iter(self.configs.values())))

    def run_dir(self, seed: int) -> Path:
        return Path(self.configs[seed].run.workdir)


def expand_grid(grid: str) -> list[Path]:
    """Flagfiles named by a comma-separated list of paths, shipped config names and globs of either (a glob
    that matches no file here is tried among the shipped configs), in order, without duplicates."""
    from mtl_keras import flagfiles

    paths: list[Path] = []
    for item in filter(None, (s.strip() for s in grid.split(","))):
        if glob.has_magic(item):
            shipped = item if item.endswith(flagfiles.SUFFIX) else item + flagfiles.SUFFIX
            matches = sorted(glob.glob(item)) or sorted(glob.glob(str(flagfiles.CONFIG_DIR / shipped)))
            matches = [m for m in matches if Path(m).is_file()]
        else:
            try:
                matches = [str(flagfiles.resolve(item))]
            except flagfiles.FlagfileError as e:
                raise ExperimentError(f"--grid: {item!r} matches no flagfile ({str(e).split('; ', 1)[1]})") from None
        if not matches:
            raise ExperimentError(f"--grid: {item!r} matches no flagfile (`mtl-keras configs` lists the shipped ones)")
        paths += [Path(m) for m in matches if Path(m) not in paths]
    if not paths:
        raise ExperimentError("--grid is empty; give config names, flagfiles or globs, e.g. --grid='fmnist_*'")
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


def _read_json(path: Path, hint: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path} is missing; {hint}") from None
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{path} cannot be read ({type(e).__name__}: {e}); {hint}") from None


def check_finished(run_dir: Path, config: TrainConfig) -> None:
    """A finished run (its metrics.json exists) must be readable, with its test predictions or its model.keras,
    and trained with today's settings; an ExperimentError line naming the run otherwise."""
    hint = f"delete {run_dir} to train that run again"
    records.check_metrics(_read_json(run_dir / "metrics.json", hint), run_dir / "metrics.json", hint)
    classes = _read_json(run_dir / "classes.json", hint)
    records.check_classes(classes, run_dir / "classes.json", hint)
    records.check_history(run_dir / "history.csv", hint)
    if (run_dir / "config.json").exists():  # (runs of early versions have none)
        _check_same_config(run_dir, config)
    try:
        predictions = evaluate.load_predictions(run_dir)
    except Exception as e:  # np.load: ValueError, OSError, zipfile.BadZipFile
        raise ExperimentError(f"{run_dir / evaluate.PREDICTIONS_FILE} cannot be read ({type(e).__name__}); "
                              f"{hint}") from None
    if predictions is None and not (run_dir / "model.keras").is_file():
        raise ExperimentError(f"{run_dir} has neither {evaluate.PREDICTIONS_FILE} nor model.keras; {hint}")
    records.check_predictions(predictions, classes, run_dir / evaluate.PREDICTIONS_FILE, hint)


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    """A finished run must have been trained with today's settings, or the table would mix two experiments."""
    saved = _read_json(run_dir / "config.json", f"delete {run_dir} to train that run again")
    # Both through `identity` (a folder dataset's data_dir by its real path), compared on the settings it saved.
    try:
        parsed = config_lib.identity(config_lib.from_saved(saved, run_dir / "config.json"))
    except config_lib.ConfigError as e:
        raise ExperimentError(f"{e}; delete {run_dir} to train that run again") from None
    saved = json.loads(json.dumps({k: v for k, v in parsed.items() if k in saved}))
    wanted = json.loads(json.dumps(config_lib.identity(config)))  # the same JSON types as the saved file
    diff = [f"{k} {saved[k]!r} != {wanted[k]!r}" for k in sorted(saved.keys() & wanted.keys()) if saved[k] != wanted[k]]
    if diff:
        raise ExperimentError(f"{run_dir} was trained with other settings ({'; '.join(diff[:3])}); delete it or "
                              f"choose another --results_dir")


def check_own_results(results_dir: Path) -> None:
    """An ExperimentError when RESULTS_DIR/results.md exists but was not written by this runner (a user's own
    notes there were overwritten once every run had failed)."""
    md = results_dir / "results.md"
    if md.is_symlink() or md.exists() and not md.read_bytes().startswith(RESULTS_HEADER.encode()):
        raise ExperimentError(f"{md} was not written by the experiments runner; move it away or choose another "
                              f"--results_dir")


def run_all(experiments: list[Experiment], seeds: list[int]) -> list[str]:
    """Trains every unfinished run with `train.run`; returns one line per failed run."""
    import keras

    from mtl_keras import train

    failures = []
    # Seed-major order: an interrupted grid already has whole seeds of every experiment to compare.
    for seed in seeds:
        for exp in experiments:
            run_dir = exp.run_dir(seed)
            if (run_dir / "metrics.json").is_file():  # check_finished has read it
                print(f"skip {exp.name} seed {seed}: {run_dir / 'metrics.json'} exists", flush=True)
                continue
            print(f"\n=== run {exp.name} seed {seed} -> {run_dir}", flush=True)
            keras.backend.clear_session()  # free the previous run's graphs; in-process runs would grow otherwise
            try:
                train.run(exp.configs[seed])
            except Exception as e:  # any failure of one run (not only MtlError): reported, and the grid goes on
                line = str(e) if isinstance(e, MtlError) else f"{type(e).__name__}: {e}"
                failures.append(f"{exp.name} seed {seed}: {(line.splitlines() or [type(e).__name__])[0]}")
                print(f"FAILED {failures[-1]}", flush=True)
            except Exception as e:  # noqa: BLE001 - any failed run is reported and the grid goes on
                failures.append(f"{exp.name} seed {seed}: {type(e).__name__}: {e}")
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


def test_predictions(run_dir: Path, config: TrainConfig) -> tuple[dict, dict]:
    """(true, predicted) class ids per head of a finished run: the test_predictions.npz train wrote; for a run
    of an older version, one test pass of its model.keras, saved there for the next time."""
    found = evaluate.load_predictions(run_dir)
    if found is None:
        from mtl_keras.data import datasets
        from mtl_keras.serving import runtime

        try:
            model = runtime.load(run_dir / "model.keras", "--results_dir").handle
        except Exception as e:  # Keras raises many types for a damaged file
            raise ExperimentError(f"{run_dir / 'model.keras'} cannot be loaded ({type(e).__name__}); delete "
                                  f"{run_dir} to train that run again") from None
        splits = datasets.prepare(config.data, config.run.seed)
        truth, probs = evaluate.predict_split(model, splits.test, splits.info)
        evaluate.save_predictions(run_dir, truth, probs, splits.info, config.model.coarse_head != "learned")
        found = evaluate.load_predictions(run_dir)
    return found


def class_tree(run_dir: Path) -> dict:
    """The run's classes.json: fine and coarse names and the fine -> coarse map."""
    return json.loads((run_dir / "classes.json").read_text())


def pair_key(config: TrainConfig) -> str:
    """What an MTL run and its STL fine / coarse pair share: everything but task, loss mix, seed and paths."""
    return json.dumps(config_lib.identity(config, "pairing"), sort_keys=True)


def stl_pairs(experiments: list[Experiment]) -> list[tuple[Experiment, Experiment]]:
    """(fine-only, coarse-only) experiments whose settings are otherwise the same."""
    return [(f, c) for f in experiments if f.task == "fine" for c in experiments
            if c.task == "coarse" and f.key == c.key]


def collect(experiments: list[Experiment], seeds: list[int]) -> tuple[list[Row], dict]:
    """Table rows (experiments, then STL pairs) and, per MTL experiment, pooled test labels and predictions."""
    rows, confusion = [], {}
    done = {e.name: [s for s in seeds if (e.run_dir(s) / "metrics.json").is_file()] for e in experiments}
    for exp in experiments:
        values: dict[str, dict[int, float]] = {}
        for seed in done[exp.name]:
            metrics = json.loads((exp.run_dir(seed) / "metrics.json").read_text())
            metrics = {**last_validation(exp.run_dir(seed) / "history.csv", exp.task), **metrics}
            if exp.task == "mtl" and metrics.get("both_wrong") is None:  # runs of versions before both_wrong
                true, pred = test_predictions(exp.run_dir(seed), exp.configs[seed])
                metrics["both_wrong"] = evaluate.both_wrong(true, pred)
            for key in (*METRICS, *VAL_METRICS, *(k for k, _, _ in COMPUTE), *(k for k, _ in TRUST)):
                if metrics.get(key) is not None:
                    values.setdefault(key, {})[seed] = float(metrics[key])
        rows.append(Row(exp.name, exp.task, exp.key, values))
        if exp.task == "mtl" and done[exp.name]:
            runs = [test_predictions(exp.run_dir(s), exp.configs[s]) for s in done[exp.name]]
            names = class_tree(exp.run_dir(done[exp.name][0]))
            confusion[exp.name] = {h: (np.concatenate([true[h] for true, _ in runs]),
                                       np.concatenate([pred[h] for _, pred in runs]), names[h], len(runs))
                                   for h in HEADS}
    for fine, coarse in stl_pairs(experiments):
        values = {m: {} for m in METRICS}
        for seed in (s for s in done[fine.name] if s in done[coarse.name]):
            (tf_, pf), (tc, pc) = (test_predictions(e.run_dir(seed), e.configs[seed]) for e in (fine, coarse))
            values["fine_accuracy"][seed] = float(np.mean((pf["fine"] == tf_["fine"])[tf_["fine"] >= 0]))
            values["coarse_accuracy"][seed] = float(np.mean((pc["coarse"] == tc["coarse"])[tc["coarse"] >= 0]))
            # Consistent where the coarse model's class is the parent of the fine model's class (the pair
            # shares its data settings, so both predicted the same test images in the same order).
            tree = class_tree(fine.run_dir(seed))["fine_to_coarse"]
            values["hierarchy_consistency"][seed] = evaluate.hierarchy_consistency(pf["fine"], pc["coarse"], tree)
            wrong = evaluate.both_wrong({"fine": tf_["fine"], "coarse": tc["coarse"]},
                                        {"fine": pf["fine"], "coarse": pc["coarse"]})
            if wrong is not None:
                values["both_wrong"][seed] = wrong
        if values["fine_accuracy"]:
            rows.append(Row(f"{fine.name} + {coarse.name}", "stl pair", fine.key, values, (fine.name, coarse.name)))
    return rows, confusion


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
    from mtl_keras.locks import refuse_links
    from mtl_keras.train import check_workdir

    results_dir = check_workdir(str(results_dir), "results_dir")  # a file there failed after the whole grid
    check_own_results(results_dir)
    refuse_links(results_dir, f"--results_dir={results_dir}")  # tables, plots and every run's records
    experiments = plan(flagfiles, seeds, results_dir, extra_args)
    for exp in experiments:  # before any training: a bad finished run stops the grid now, not hours later
        for seed in seeds:
            if (exp.run_dir(seed) / "metrics.json").is_file():
                check_finished(exp.run_dir(seed), exp.configs[seed])
    failures = run_all(experiments, seeds)
    rows = write_outputs(experiments, seeds, results_dir, command)
    print("\n" + markdown_table(rows))
    print(f"wrote {results_dir / 'results.md'}, {results_dir / 'results.csv'} and PNGs")
    return failures
