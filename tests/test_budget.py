"""--time_budget: a schedule that follows the elapsed share of a wall-clock budget, a stop at the budget, and a
resumed run that continues the same budget."""

import json
import math

import keras
import numpy as np
import pytest
from absl import flags

from mtl_keras import budget, config
from mtl_keras.flags import config_from_args, error_line


def test_rate_warms_up_then_decays_to_zero_over_the_budget():
    peak = 2e-3
    assert budget.learning_rate(0.0, peak, 0.1, "cosine") == 0.0
    assert budget.learning_rate(0.05, peak, 0.1, "cosine") == pytest.approx(peak / 2)
    assert budget.learning_rate(0.1, peak, 0.1, "cosine") == pytest.approx(peak)
    assert budget.learning_rate(0.55, peak, 0.1, "cosine") == pytest.approx(peak / 2)  # half-way through the decay
    assert budget.learning_rate(1.0, peak, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert budget.learning_rate(1.7, peak, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)  # past the budget
    assert budget.learning_rate(0.9, peak, 0.1, "constant") == peak
    assert budget.learning_rate(0.5, peak, 0.0, "cosine") == pytest.approx(peak / 2)


class _Clock(keras.callbacks.Callback):
    """time.perf_counter for budget.py, and a callback placed before the budget's: one second passes per step."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, batch, logs=None):
        self.now += 1.0


class _Rates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_end(self, batch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def _fit(tmp_path, clock, seconds, epochs=10, initial_epoch=0):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(0.0), loss="mse")
    x, y = np.ones((32, 4), "float32"), np.zeros((32, 2), "float32")
    timer = budget.TimeBudget(seconds, 1e-2, 0.2, "cosine", tmp_path / "checkpoints", initial_epoch)
    rates = _Rates()
    model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
              callbacks=[clock, timer, rates])
    return timer, rates.rates


@pytest.mark.slow  # fits a one-layer model (the fast tier fits nothing)
def test_fit_follows_the_clock_and_stops_at_the_budget(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    timer, rates = _fit(tmp_path, clock, seconds=10.0)
    # 4 steps an epoch, one second a step: the 10th step ends at the budget, in the third of the ten epochs.
    assert timer.stopped and timer.steps == 10 and len(rates) == 10
    # Each step's rate is the schedule at the elapsed share of the budget when it began (warmup: 20 %).
    for step, rate in enumerate(rates):
        assert rate == pytest.approx(budget.learning_rate(step / 10.0, 1e-2, 0.2, "cosine"), rel=1e-5), step
    assert rates[0] < rates[1] < rates[2] and rates[-1] < 1e-3  # warmed up, then decayed towards 0
    records = json.loads((tmp_path / "checkpoints" / budget.FILE).read_text())
    assert sorted(records, key=int) == ["1", "2", "3"] and records["3"]["steps"] == 10


@pytest.mark.slow  # fits a one-layer model (the fast tier fits nothing)
def test_a_resumed_run_continues_the_same_budget(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    first, _ = _fit(tmp_path, clock, seconds=10.0, epochs=2)  # a run killed after its second epoch
    assert not first.stopped and first.steps == 8
    assert budget.spent(tmp_path / "checkpoints", 2) == (8.0, 8)  # what the resumed run starts from
    second, rates = _fit(tmp_path, clock, seconds=10.0, initial_epoch=2)
    assert second.spent == 10.0 and second.steps == 10 and second.initial_steps == 8
    assert len(rates) == 2 and second.stopped  # only the 2 s left of the budget
    # The rate carries on from where the budget stood, not from the start of the warmup.
    assert rates == pytest.approx([budget.learning_rate(f, 1e-2, 0.2, "cosine") for f in (0.8, 0.9)], rel=1e-5)
    assert budget.spent(tmp_path / "checkpoints", 1) == (4.0, 4)
    assert budget.spent(tmp_path / "checkpoints", 0) == (0.0, 0)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_number_is_one_line(value):
    with pytest.raises(flags.Error) as e:
        config_from_args([f"--time_budget={value}"])
    assert error_line(e.value).startswith("--time_budget"), error_line(e.value)


def test_a_changed_budget_is_another_run_for_a_checkpoint():
    a = config.identity(config_from_args(["--time_budget=900"]), "checkpoint")
    b = config.identity(config_from_args(["--time_budget=600"]), "checkpoint")
    assert a["time_budget"] == 900 and a != b
    assert config_from_args([]).optim.time_budget is None
    assert not math.isnan(a["time_budget"])


@pytest.mark.slow
def test_train_stops_at_the_budget_records_it_and_a_rerun_trains_no_further(tmp_path, capsys):
    from mtl_keras import train
    from mtl_keras.errors import MtlError

    settings = dict(dataset="shapes", variant="Pico/4", max_train_examples=512, validation_fraction=0.02,
                    batch_size=64, epochs=40, time_budget=6.0, warmup_epochs=1.0, jit_compile=False, export=False,
                    workdir=str(tmp_path / "w"))
    metrics = train.run(config.make(**settings))
    record = metrics["time_budget"]
    assert record["stopped_by_budget"] and record["seconds"] == 6.0 and record["spent"] >= 6.0
    assert 1 <= record["epochs"] < 40 and record["epochs"] == metrics["epochs_run"]
    assert record["steps"] == record["steps_this_attempt"] >= 1
    assert record["steps"] <= record["epochs"] * (512 // 64)
    again = train.run(config.make(**settings))  # the same budget, already spent: nothing is trained again
    assert "nothing left to train" in capsys.readouterr().out
    assert again["time_budget"]["steps"] == record["steps"] and again["epochs_run"] == 0
    with pytest.raises(MtlError, match="time_budget"):  # another budget is another run
        train.run(config.make(**{**settings, "time_budget": 60.0}))


@pytest.mark.slow  # fits a one-layer model (the fast tier fits nothing)
def test_one_budget_runs_on_across_two_fits_and_until_ends_the_first_early(tmp_path, monkeypatch):
    """Progressive resolution's two sizes: the first fit stops at `until`, the second carries on the clock."""
    clock = _Clock()
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(0.0), loss="mse")
    x, y = np.ones((32, 4), "float32"), np.zeros((32, 2), "float32")
    timer = budget.TimeBudget(10.0, 1e-2, 0.2, "cosine", tmp_path / "checkpoints")
    timer.until = 3.0
    first = _Rates()
    model.fit(x, y, batch_size=8, epochs=10, verbose=0, callbacks=[clock, timer, first])
    assert len(first.rates) == 3 and not timer.stopped and timer.spent == 3.0  # ended early, not by the budget
    clock.now += 5.0  # time between the two fits (outside fit, not training) is not counted
    timer.until = timer.seconds
    second = _Rates()
    model.fit(x, y, batch_size=8, epochs=10, initial_epoch=1, verbose=0, callbacks=[clock, timer, second])
    assert timer.stopped and timer.steps == 10 and len(second.rates) == 7
    assert second.rates == pytest.approx([budget.learning_rate(s / 10.0, 1e-2, 0.2, "cosine") for s in range(3, 10)],
                                         rel=1e-5)
