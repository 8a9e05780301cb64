import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from dagan_tf import metrics, recipes
from dagan_tf.data.pipeline import training_dataset
from dagan_tf.data.prepare import load_split
from dagan_tf.errors import DaganError
from dagan_tf.masks import MaskSpec
from dagan_tf.training.run import build_trainer, train

def _fixed_batch(prepared, n=8):
    ds, _ = training_dataset(load_split(prepared, "train"), n, MaskSpec("gaussian1d", 0.3), augment=None)
    return next(iter(ds))


def test_generator_loss_decreases(real_slices):
    model = build_trainer(tiny_config())
    batch = _fixed_batch(real_slices)
    step = tf.function(model.train_step)
    losses = [float(step(batch)["g_loss"]) for _ in range(25)]
    # the trackers average over steps; the last running mean must be below the first values
    assert losses[-1] < losses[0]
    fresh = model.generator_losses(*batch)
    assert float(fresh["g_pixel"]) < float(build_trainer(tiny_config()).generator_losses(*batch)["g_pixel"])


def test_short_training_beats_zero_filled_on_training_slices(real_slices):
    keras.utils.set_random_seed(0)
    model = build_trainer(tiny_config("ppgr", "train.lr=0.001"))
    batch = _fixed_batch(real_slices)
    zf, target = batch
    step = tf.function(model.train_step)
    for _ in range(60):
        step(batch)
    # a decayed learning rate lets the batch-norm moving statistics (used at inference) catch up
    for opt in (model.network_optimizer, model.adversary_optimizer):
        opt.learning_rate.assign(1e-5)
    for _ in range(20):
        step(batch)
    recon = model.network(zf, training=False)
    assert float(np.mean(metrics.psnr(target, recon))) > float(np.mean(metrics.psnr(target, zf))) + 2.0


def _checkpoint_tensors(run, number):
    reader = tf.train.load_checkpoint(str(run / "checkpoints" / f"ckpt-{number}"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "save_counter" not in k and "OBJECT_GRAPH" not in k}


def test_run_folder_contents(trained_run):
    assert (trained_run / "config.yaml").exists() and (trained_run / "best.weights.h5").exists()
    history = (trained_run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_nmse" in history[0] and "learning_rate" in history[0]
    rows = [dict(zip(history[0].split(","), line.split(","))) for line in history[1:]]
    cpu = [float(r["cpu_minutes"]) for r in rows]
    assert 0 < cpu[0] < cpu[1] and 0 < float(rows[0]["wall_minutes"]) < float(rows[1]["wall_minutes"])
    assert any("images" in d for d in os.listdir(trained_run / "logs"))
    tensors = _checkpoint_tensors(trained_run, 2)
    assert any("g_optimizer" in k for k in tensors) and any("d_optimizer" in k for k in tensors)


def test_training_clock_continues_across_resumes(tmp_path):
    from dagan_tf.training.callbacks import TrainingClock

    history = tmp_path / "history.csv"
    history.write_text("epoch,cpu_minutes,val_psnr,wall_minutes\n0,1.5,30.0,1.0\n1,3.25,31.0,2.0\n")
    clock = TrainingClock(history)
    clock.on_train_begin()
    logs = {"val_psnr": 32.0}
    clock.on_epoch_end(2, logs)
    assert 3.25 <= logs["cpu_minutes"] < 3.25 + 1.0 and 2.0 <= logs["wall_minutes"] < 2.0 + 1.0
    # a history written before the clock existed keeps its columns: no times are added
    history.write_text("epoch,val_psnr\n0,30.0\n")
    clock = TrainingClock(history)
    clock.on_train_begin()
    logs = {"val_psnr": 32.0}
    clock.on_epoch_end(1, logs)
    assert logs == {"val_psnr": 32.0}
    # a new run starts from zero
    clock = TrainingClock(tmp_path / "none.csv")
    clock.on_train_begin()
    clock.on_epoch_end(0, logs)
    assert 0.0 <= logs["cpu_minutes"] < 1.0


def test_cpu_budget_counts_the_spent_minutes(monkeypatch):
    """train.max_cpu_minutes stops after the batch that exceeds the budget less a resumed run's CPU-minutes."""
    from dagan_tf.training.callbacks import CLOCKS, TimeBudget

    now = [100.0]
    monkeypatch.setitem(CLOCKS, "cpu", lambda: now[0])
    budget = TimeBudget(2.0, "cpu", spent=1.5)  # 30 s left
    budget.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    budget.model.stop_training = False
    budget.on_train_begin()
    for _ in range(3):
        now[0] += 10.0
        budget.on_train_batch_end(0)
    assert not budget.model.stop_training and not budget.cut_short  # 30 s spent: not over yet
    now[0] += 0.5
    budget.on_train_batch_end(0)
    assert budget.model.stop_training and budget.cut_short and budget.steps == 4


def test_kill_and_resume_equals_uninterrupted(tmp_path, real_slices, trained_run):
    """kill -9 during epoch 2 of a 3-epoch run, resume, and compare every checkpointed tensor."""
    reference = tmp_path / "reference"
    config = tiny_config("ppgr", "train.epochs=3", "train.steps_per_epoch=6")
    train(reference, config, real_slices, verbose=0)
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text(recipes.dump(config))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dagan_tf.cli", "train", "--recipe", str(config_file), "--data", str(real_slices),
           "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "ckpt-1.index").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "ckpt-1.index").exists()
    assert not (run / "checkpoints" / "ckpt-3.index").exists(), "the run finished before it was killed"
    resumed = subprocess.run(cmd[:4] + ["--out", str(run), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours, theirs = _checkpoint_tensors(run, 3), _checkpoint_tensors(reference, 3)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_nan_loss_stops_with_clear_message(tmp_path, real_slices, monkeypatch):
    from dagan_tf.training import cgan

    monkeypatch.setattr(cgan, "pixel_loss", lambda target, output, kind: tf.constant(float("nan")))
    run = tmp_path / "nan"
    with pytest.raises(DaganError, match="NaN/Inf"):
        train(run, tiny_config("pg"), real_slices, verbose=0)
    assert not run.exists(), "a run that failed before its first checkpoint is removed"
    run.mkdir()  # a folder the user made: emptied again, not removed
    with pytest.raises(DaganError, match="NaN/Inf"):
        train(run, tiny_config("pg"), real_slices, verbose=0)
    assert run.is_dir() and not any(run.iterdir())


def test_recipe_errors(tmp_path, real_slices):
    with pytest.raises(DaganError, match="valid recipes: cascade-deep, cwgan, cwgan-agb, dcinet, pg, ppg, ppgr"):
        recipes.load_recipe("srgan")
    with pytest.raises(DaganError, match="valid keys: .*train.batch_size"):
        recipes.apply_overrides(recipes.load_recipe("ppgr"), ["train.batchsize=3"])
    with pytest.raises(DaganError, match="not a run folder"):
        train(tmp_path / "none", resume=True)


def test_eval_run_with_dc_and_compat(tmp_path, trained_run, real_slices):
    from click.testing import CliRunner

    from dagan_tf.cli import main

    for flags, name in (([], "plain"), (["--dc"], "dc"), (["--dagan-compat-metrics"], "compat")):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["eval", "--run", str(trained_run), "--no-baselines", "--data", str(real_slices),
                                           "--out", str(out)] + flags)
        assert result.exit_code == 0, result.output
        m = json.loads((out / "metrics.json").read_text())
        model = "model+dc" if name == "dc" else "model"
        assert model in m and "zero_filled" in m and (out / "report.md").exists()
        assert m["n_slices"] == len(load_split(real_slices, "test").images)
        if name == "dc":
            assert m[model]["psnr"]["mean"] > m["zero_filled"]["psnr"]["mean"]
        if name == "compat":
            assert m["metric_definitions"] == "dagan-compat"


def test_learning_rate_schedules_by_hand():
    """constant, step (halving per epoch) and cosine (over steps) values, with and without a linear warm-up."""
    from dagan_tf.training.callbacks import LearningRate

    assert LearningRate("constant", 1e-3)(500, 7, 0.9) == 1e-3
    step = LearningRate("step", 1e-3, halve_every=5)
    assert [step(0, e, 0.0) for e in (0, 4, 5, 9, 10)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    cosine = LearningRate("cosine", 1e-3, floor=1e-5)
    for progress, expected in ((0.0, 1e-3), (0.5, 1e-5 + (1e-3 - 1e-5) / 2), (1.0, 1e-5), (1.7, 1e-5)):
        assert cosine(0, 0, progress) == pytest.approx(expected, rel=1e-12)
    assert cosine(0, 0, 0.25) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi / 4)) / 2, rel=1e-12)
    warm = LearningRate("cosine", 1e-3, warmup_steps=4)
    assert [warm(s, 0, 0.0) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def _optimizer_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.optimizers = [keras.optimizers.Adam(1.0)]
    return model


def test_step_cosine_schedule_sets_every_step_and_counts_the_warm_up():
    """The callback's rate at each step (epochs × steps budget, the cosine starting after the warm-up)."""
    from dagan_tf.training.callbacks import LearningRate, LearningRateSchedule

    schedule = LearningRateSchedule(LearningRate("cosine", 1e-3, warmup_steps=2), steps_per_epoch=3, total_steps=12)
    schedule.set_model(_optimizer_model())
    schedule.on_train_begin()
    seen = []
    for epoch in range(4):
        schedule.on_epoch_begin(epoch)
        for batch in range(3):
            schedule.on_train_batch_begin(batch)
            seen.append(float(schedule.model.optimizers[0].learning_rate.numpy()))
    expected = [5e-4, 1e-3] + [1e-3 * (1 + np.cos(np.pi * (s - 2) / 10)) / 2 for s in range(2, 12)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_time_based_cosine_resumes_exactly(monkeypatch):
    """A cosine over CPU-minutes: a run stopped at minute 12 of 40 and resumed (its history's 12 minutes as the
    spent offset, a fresh process clock) sets the same rates at the same CPU-minutes as one uninterrupted run."""
    from dagan_tf.training.callbacks import CLOCKS, LearningRate, LearningRateSchedule, RunClock

    now = [0.0]
    monkeypatch.setitem(CLOCKS, "cpu", lambda: now[0])
    rate = LearningRate("cosine", 1e-3, floor=1e-4)

    def rates(spent: float, start_seconds: float, minutes: list[float]) -> list[float]:
        schedule = LearningRateSchedule(rate, 10, 10 ** 6, RunClock("cpu", spent), budget_minutes=40.0)
        schedule.set_model(_optimizer_model())
        now[0] = start_seconds
        schedule.on_train_begin()
        schedule.on_epoch_begin(0)
        out = []
        for minute in minutes:
            now[0] = start_seconds + (minute - spent) * 60.0
            schedule.on_train_batch_begin(0)
            out.append(float(schedule.model.optimizers[0].learning_rate.numpy()))
        return out

    later = [12.0, 20.5, 39.0, 45.0]
    uninterrupted = rates(0.0, 100.0, [3.0] + later)[1:]
    resumed = rates(12.0, 7.0, later)  # another process: its CPU clock starts elsewhere
    assert resumed == uninterrupted
    expected = [1e-4 + 9e-4 * (1 + np.cos(np.pi * min(m / 40.0, 1.0))) / 2 for m in later]
    np.testing.assert_allclose(resumed, expected, rtol=1e-6)


def test_schedule_keys_are_validated():
    base = recipes.load_recipe("recnet")
    with pytest.raises(DaganError, match="train.lr_halve_every 5 needs train.lr_schedule step"):
        recipes.apply_overrides(base, ["train.lr_schedule=cosine", "train.lr_halve_every=5"])
    with pytest.raises(DaganError, match="train.lr_min"):
        recipes.apply_overrides(base, ["train.lr_schedule=cosine", "train.lr_min=0.01"])
    with pytest.raises(DaganError, match="train.lr_schedule must be one of constant, step, cosine"):
        recipes.apply_overrides(base, ["train.lr_schedule=linear"])
    old = recipes.load_recipe("ppgr")
    del old["train"]["lr_schedule"]  # a run's config.yaml from before the key: the halving it always had
    assert recipes.validate_config(old)["train"]["lr_schedule"] == "step"


def test_cosine_over_epochs_in_training_logs_and_resumes_exactly(tmp_path, real_slices):
    """A recnet run with a cosine over its 2 epochs × 3 steps: history's learning_rate is the rate of each
    epoch's last step, and a run stopped after its first epoch and resumed ends with the uninterrupted run's
    weights, bit for bit."""
    from dagan_tf.training.trained import load_run_network
    from dagan_tf.training.callbacks import read_history

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    config = recipes.apply_overrides(recipes.load_recipe("recnet"), [
        "model.image_size=32", "cascade.blocks=1", "cascade.filters=4", "data.acs=2", "train.batch_size=4",
        "train.val_batch_size=8", "train.steps_per_epoch=3", "train.epochs=2", "train.deterministic=true",
        "train.lr_schedule=cosine", "train.lr_warmup_steps=1", "train.lr=0.002", "train.keep=last"])
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(whole, config, real_slices)
    train(part, config, real_slices, callbacks=[StopAfterFirstEpoch()])
    assert len(read_history(part / "history.csv")) == 1
    train(part, resume=True)
    expected = [0.002 * (1 + np.cos(np.pi * (s - 1) / 5)) / 2 for s in (2, 5)]
    for run_dir in (whole, part):
        logged = [float(row["learning_rate"]) for row in read_history(run_dir / "history.csv")]
        np.testing.assert_allclose(logged, expected, rtol=1e-6)
    for x, y in zip(load_run_network(whole)[0].weights, load_run_network(part)[0].weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
