"""`mtl-keras experiments --grid=... --seeds=... --results_dir=...` (see runner.py). Training flags given
here are passed to every run after its flagfile, so they win over the flagfile."""

import sys

from absl import app, flags, logging

from mtl_keras import flags as mtl_flags
from mtl_keras.errors import ExperimentError, MtlError, interrupted, report
from mtl_keras.experiments.runner import expand_grid, run_experiments


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    fv = flags.FLAGS
    try:
        if len(argv) > 1:
            raise ExperimentError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
        if not fv.grid or not fv.results_dir:
            raise ExperimentError("--grid and --results_dir are required, e.g. --grid='fmnist_*' "
                                  "--results_dir=results/fashion_mnist")
        for name, instead in (("seed", "--seeds"), ("workdir", "--results_dir")):
            if fv[name].present:
                raise ExperimentError(f"--{name} is set per run; use {instead}")
        from mtl_keras import console, train

        train.freeze_imported()
        print(console.hardware_line(), flush=True)
        seeds = [int(s) for s in fv.seeds]
        extra = mtl_flags.given_train_flags(fv)
        command = " ".join(["mtl-keras experiments", f"--grid='{fv.grid}'", f"--seeds={','.join(fv.seeds)}",
                            f"--results_dir={fv.results_dir}", *extra])
        failures = run_experiments(expand_grid(fv.grid), seeds, fv.results_dir, extra, command)
    except MtlError as e:
        sys.exit(report("experiments", e))
    except KeyboardInterrupt:
        sys.exit(interrupted("experiments", "rerun the same command: finished runs are kept, the interrupted one "
                                            "resumes from its last finished epoch"))
    if failures:
        sys.exit(f"experiments: {len(failures)} run(s) failed (rerun to retry them): " + " | ".join(failures))


def cli(argv: list[str] | None = None) -> None:
    """`mtl-keras experiments` and `python -m mtl_keras.experiments`."""
    mtl_flags.define_experiments_flags(flags.FLAGS)
    mtl_flags.adopt_for_help(flags.FLAGS)
    app.run(main, argv=argv, flags_parser=mtl_flags.parser_exiting_in_one_line("experiments"))


if __name__ == "__main__":
    cli()
