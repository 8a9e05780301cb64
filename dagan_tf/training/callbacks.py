"""Callbacks for resumable GAN training: LR schedule, run state (checkpoint, early stopping, NaN) and images."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dagan_tf import metrics
from dagan_tf.figures import FigureRow, comparison_figure


CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}  # "cpu": process CPU time, all threads


class RunClock:
    """Minutes of ``clock`` (:data:`CLOCKS`) since the run began: ``spent`` minutes of earlier invocations
    (a resumed run's history) plus those since :meth:`start`."""

    def __init__(self, clock: str = "wall", spent: float = 0.0):
        self.clock, self.spent, self.origin = clock, spent, None

    def start(self) -> None:
        self.origin = CLOCKS[self.clock]()

    def minutes(self) -> float:
        return self.spent + (CLOCKS[self.clock]() - self.origin) / 60.0


@dataclass(frozen=True)
class LearningRate:
    """The learning rate at a step: a linear warm-up from ``base / warmup_steps`` to ``base`` over the first
    ``warmup_steps`` steps, then ``kind``: ``constant``; ``step`` = ``base · 0.5^(epoch // halve_every)``
    (0: never); ``cosine`` = ``floor + (base − floor)·(1 + cos(π·p))/2`` with ``p`` the fraction of the
    budget spent (clipped to [0, 1]), in steps or minutes."""

    kind: str
    base: float
    warmup_steps: int = 0
    halve_every: int = 0
    floor: float = 0.0

    def __call__(self, step: int, epoch: int, progress: float) -> float:
        if step < self.warmup_steps:
            return self.base * (step + 1) / self.warmup_steps
        if self.kind == "step" and self.halve_every:
            return self.base * 0.5 ** (epoch // self.halve_every)
        if self.kind == "cosine":
            fraction = min(max(progress, 0.0), 1.0)
            return self.floor + (self.base - self.floor) * 0.5 * (1.0 + math.cos(math.pi * fraction))
        return self.base


class LearningRateSchedule(keras.callbacks.Callback):
    """Sets every optimizer's learning rate before each step from :class:`LearningRate` (stateless: a resumed
    run continues it exactly, its step from the epoch it resumes at and its clock from the run's history).

    The budget a cosine decays over is ``total_steps`` steps, or with ``clock`` (a :class:`RunClock`) its
    ``budget_minutes``; the epoch's last rate is logged as ``learning_rate``.
    """

    def __init__(self, rate: LearningRate, steps_per_epoch: int, total_steps: int, clock: RunClock | None = None,
                 budget_minutes: float | None = None):
        super().__init__()
        self.rate, self.steps_per_epoch, self.total_steps = rate, steps_per_epoch, total_steps
        self.clock, self.budget_minutes = clock, budget_minutes
        self.epoch, self.value = 0, rate.base

    def on_train_begin(self, logs=None):
        if self.clock is not None:
            self.clock.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def progress(self, step: int) -> float:
        """The fraction of the budget spent before ``step``: by the clock, or by steps after the warm-up."""
        if self.clock is not None:
            return self.clock.minutes() / self.budget_minutes
        warmup = self.rate.warmup_steps
        return (step - warmup) / max(self.total_steps - warmup, 1)

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch
        self.value = self.rate(step, self.epoch, self.progress(step))
        for opt in self.model.optimizers:
            opt.learning_rate.assign(self.value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.value


def checkpoints_newest_first(folder: Path) -> list[str]:
    """Prefixes ``folder/ckpt-N`` of the checkpoints whose index file exists, newest first.

    Found from the files themselves, so a dangling or corrupt ``checkpoint`` state file does not matter.
    """
    numbers = [p.name[5:-6] for p in Path(folder).glob("ckpt-*.index")]
    return [str(Path(folder) / f"ckpt-{n}") for n in sorted((int(n) for n in numbers if n.isdigit()), reverse=True)]


class RunState(keras.callbacks.Callback):
    """Checkpoints, early stopping on ``monitor``, NaN/Inf detection and stop requests.

    The checkpoint holds the trainer's ``checkpoint_objects()`` (networks and
    optimizers), the next epoch and the early-stopping state (best value, epochs
    without improvement); it is written at each epoch end by
    ``tf.train.CheckpointManager`` (data files first, the index file last), so a
    kill leaves the previous checkpoint usable.  The best generator (``keep_last``: the
    last epoch's) is saved to ``best.weights.h5`` (written to a temporary name, then
    renamed) and restored at the end of training.  ``interrupted`` (set by :class:`Signals`) stops
    training after the current batch.
    """

    def __init__(self, run_dir: str | Path, patience: int = 10, monitor: str = "val_nmse", keep: int = 2,
                 keep_last: bool = False, select: str = "monitor", select_from_epoch: int = 1):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.patience, self.keep, self.keep_last = patience, keep, keep_last
        self.select, self.select_from = select, select_from_epoch
        self.nmse_key = monitor
        self.monitor = "val_fid" if select == "fid" else monitor
        self.scores: list[dict] = []  # fid_nmse: per epoch {"epoch", "nmse", "fid"} (selection.json)
        self.next_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="next_epoch")
        self.best = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.stopped_reason: str | None = None
        self.interrupted: str | None = None
        self.manager: tf.train.CheckpointManager | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def attach(self, model) -> "RunState":
        """Create the checkpoint for ``model`` (a trainer with ``checkpoint_objects()``, optimizers built)."""
        self.set_model(model)
        ckpt = tf.train.Checkpoint(**model.checkpoint_objects(), next_epoch=self.next_epoch, best=self.best,
                                   wait=self.wait)
        self.manager = tf.train.CheckpointManager(ckpt, str(self.checkpoint_dir), max_to_keep=self.keep)
        return self

    def restore(self) -> tuple[int | None, list[str]]:
        """Restore the newest intact checkpoint: ``(epoch to start from or None, skipped damaged ones)``.

        Leftover ``ckpt-N_temp`` folders of a write cut short by a kill are removed
        first; damaged checkpoints (truncated data, corrupt index) are skipped.
        """
        for temp in self.checkpoint_dir.glob("ckpt-*_temp*"):
            shutil.rmtree(temp, ignore_errors=True) if temp.is_dir() else temp.unlink()
        skipped = []
        for path in checkpoints_newest_first(self.checkpoint_dir):
            try:
                self.manager.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as exc:  # truncated files raise IndexError, OpError, ValueError, ...
                skipped.append(f"{path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            if self.select == "fid_nmse" and self.selection_path.is_file():
                done = int(self.next_epoch.numpy())
                self.scores = [r for r in json.loads(self.selection_path.read_text()) if r["epoch"] <= done]
            return int(self.next_epoch.numpy()), skipped
        return None, skipped

    @property
    def selection_path(self) -> Path:
        return self.run_dir / "selection.json"

    def epoch_weights_path(self, epoch: int) -> Path:
        """Where ``fid_nmse`` keeps the generator weights of ``epoch`` (1-based)."""
        return self.run_dir / "epochs" / f"epoch-{epoch:04d}.weights.h5"

    def _select_normalised(self, epoch: int, logs: dict) -> bool:
        """Appendix B.3: keep this epoch's weights and scores; the candidate epoch (from ``select_from``) with
        the lowest sum of FID and NMSE, each standardised over the candidates, becomes ``best.weights.h5``
        (``best`` holds its number).  Whether the selected epoch is this one."""
        number = epoch + 1
        _save_weights(self.model.network, self.epoch_weights_path(number))
        self.scores = [r for r in self.scores if r["epoch"] < number]
        self.scores.append({"epoch": number, "nmse": float(logs.get(self.nmse_key, math.nan)),
                            "fid": float(logs.get("val_fid", math.nan))})
        tmp = self.selection_path.with_name(".selection.tmp.json")
        tmp.write_text(json.dumps(self.scores, indent=1))
        os.replace(tmp, self.selection_path)
        chosen = normalised_selection(self.scores, self.select_from)
        if chosen is None:
            return False
        previous = float(self.best.numpy())
        if not math.isfinite(previous) or chosen != int(previous):
            self.best.assign(chosen)
            tmp = self.best_weights_path.with_name(".best.tmp.weights.h5")
            shutil.copyfile(self.epoch_weights_path(chosen), tmp)
            os.replace(tmp, self.best_weights_path)
        return chosen == number

    @property
    def best_weights_path(self) -> Path:
        return self.run_dir / "best.weights.h5"

    def on_train_batch_end(self, batch, logs=None):
        if self.interrupted:
            self.model.stop_training = True
            return
        bad = [k for k, v in (logs or {}).items() if not math.isfinite(float(v))]
        if bad:
            self.stopped_reason = (f"{', '.join(bad)} became NaN/Inf at step {batch} of epoch "
                                   f"{int(self.next_epoch.numpy())}")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_reason or self.interrupted:
            return
        if self.select == "fid_nmse":
            improved = self._select_normalised(epoch, logs or {})
        else:
            value = float((logs or {}).get(self.monitor, math.nan))
            improved = epoch + 1 >= self.select_from and math.isfinite(value) and value < float(self.best.numpy())
            if improved:
                self.best.assign(value)
            if improved or self.keep_last:
                _save_weights(self.model.network, self.best_weights_path)
        if improved:
            self.wait.assign(0)
        else:
            self.wait.assign_add(1)
        self.next_epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        if self.patience and int(self.wait.numpy()) >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights_path.exists() and not self.stopped_reason and not self.interrupted:
            self.model.network.load_weights(str(self.best_weights_path))


def _save_weights(network, path: Path) -> None:
    """``network``'s weights to ``path`` (written to a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:-len('.weights.h5')]}.tmp.weights.h5")
    network.save_weights(str(tmp))
    os.replace(tmp, path)


def normalised_selection(scores: list[dict], first_epoch: int = 1) -> int | None:
    """The epoch (of ``scores`` rows ``{"epoch", "nmse", "fid"}`` from ``first_epoch`` on, finite values only)
    minimising ``(fid − mean)/std + (nmse − mean)/std`` over those epochs (a constant series counts 0);
    ``None`` without candidates."""
    rows = [r for r in scores if r["epoch"] >= first_epoch and math.isfinite(r["nmse"]) and math.isfinite(r["fid"])]
    if not rows:
        return None

    def standardised(key):
        values = np.array([r[key] for r in rows], np.float64)
        spread = values.std()
        return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)

    return int(rows[int(np.argmin(standardised("fid") + standardised("nmse")))]["epoch"])


class ReplicatedValidation(keras.callbacks.Callback):
    """Adds ``val_<name>`` to each epoch's logs for every value the trainer's ``test_step`` returns, run over
    all of ``val_ds`` on every worker, outside the replicas (no collective operation).

    Used with several replicas instead of Keras' sharded validation, which gives a replica an empty slice of a
    last partial batch; every worker computes the same values, so early stopping decides alike everywhere.
    """

    def __init__(self, val_ds):
        super().__init__()
        self.val_ds = val_ds
        self.step = None

    def on_epoch_end(self, epoch, logs=None):
        if self.step is None:
            self.step = tf.function(self.model.test_step)
        for tracker in self.model.metrics:
            tracker.reset_state()
        results = {}
        for batch in self.val_ds:
            results = self.step(batch)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})


class ValidationFID(keras.callbacks.Callback):
    """Adds ``val_fid`` to each epoch's logs (before :class:`RunState` reads them): the FID between the
    trainer's reconstructions of the validation batches (``model.reconstruct``) and their targets, on the
    features of :class:`dagan_tf.models.fid.FIDFeatures` (the targets' computed once)."""

    def __init__(self, features, val_ds):
        super().__init__()
        self.features, self.val_ds = features, val_ds
        self.reference = None

    def on_epoch_end(self, epoch, logs=None):
        recons, targets = [], []
        for batch in self.val_ds:
            recons.append(self.features(self.model.reconstruct(batch)))
            if self.reference is None:
                targets.append(self.features(self.model.target(batch)))
        if self.reference is None:
            self.reference = np.concatenate(targets)
        if logs is not None:
            logs["val_fid"] = metrics.frechet_distance(np.concatenate(recons), self.reference)


class Signals:
    """While active, SIGINT/SIGTERM set ``state.interrupted`` (training stops after the batch);
    a second signal acts as usual.  Only installed in the main thread."""

    def __init__(self, state: RunState):
        self.state = state
        self.previous = {}

    def _handle(self, signum, frame):
        self.state.interrupted = f"interrupted by {signal.Signals(signum).name}"
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``minutes`` of a clock have run (checked after every batch).

    ``clock`` is ``"wall"`` (monotonic time of this invocation) or ``"cpu"`` (process CPU time, all
    threads: a budget that does not depend on how busy the machine is); ``spent`` minutes of an
    earlier invocation (a resumed run's ``cpu_minutes``) count against it.  ``cut_short`` tells
    whether the budget ended training; ``steps`` counts the batches run.
    """

    def __init__(self, minutes: float, clock: str = "wall", spent: float = 0.0):
        super().__init__()
        self.minutes, self.clock = minutes, clock
        self.run_clock = RunClock(clock, spent)
        self.cut_short = False
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.run_clock.start()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.run_clock.minutes() > self.minutes:
            self.cut_short = True
            self.model.stop_training = True


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``history.csv`` (column -> text); none when it does not exist."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class TrainingClock(keras.callbacks.Callback):
    """Add ``wall_minutes`` and ``cpu_minutes`` (process CPU time, all threads) spent so far to the epoch logs.

    The times count training and validation since the run began: on resume the last row of
    ``history.csv`` gives the starting values, so learning curves (validation PSNR against
    CPU-minutes) continue across resumes.  A run whose history was written without these
    columns keeps its columns (the CSV header is fixed) and gets no times.
    """

    columns = ("cpu_minutes", "wall_minutes")

    def __init__(self, history_csv: Path):
        super().__init__()
        self.history_csv = Path(history_csv)
        self.offsets = {key: 0.0 for key in self.columns}
        self.enabled = True
        self.start: tuple[float, float] = (0.0, 0.0)

    def on_train_begin(self, logs=None):
        rows = read_history(self.history_csv)
        if rows:
            self.enabled = all(key in rows[0] for key in self.columns)
            if self.enabled:
                self.offsets = {key: float(rows[-1][key]) for key in self.columns}
        self.start = (time.process_time(), time.monotonic())

    def on_epoch_end(self, epoch, logs=None):
        if self.enabled and logs is not None:
            cpu, wall = time.process_time() - self.start[0], time.monotonic() - self.start[1]
            logs["cpu_minutes"] = self.offsets["cpu_minutes"] + cpu / 60.0
            logs["wall_minutes"] = self.offsets["wall_minutes"] + wall / 60.0


class ImageGrid(keras.callbacks.Callback):
    """TensorBoard image per epoch: the labelled comparison figure of :mod:`dagan_tf.figures`
    (ground truth | zero-filled | error | model | error, PSNR/SSIM per image) for a fixed validation batch:
    an :class:`~dagan_tf.data.batches.ImagePair` (magnitudes, or complex channels) or a
    :class:`~dagan_tf.data.batches.KSpaceBatch` (the trainer's
    :meth:`~dagan_tf.training.common.TrainerModel.reconstruct` and ``target`` take either)."""

    def __init__(self, log_dir: str | Path, batch, max_images: int = 4):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))
        self.batch = type(batch)(*(None if x is None else x[:max_images] for x in batch))
        zero_filled = np.asarray(self.batch.zero_filled)
        self.zero_filled = np.sqrt(np.sum(np.square(zero_filled), axis=-1, keepdims=True))
        self.target = None

    def on_train_begin(self, logs=None):
        self.target = self.model.target(self.batch).numpy()

    def on_epoch_end(self, epoch, logs=None):
        target = self.target
        recon = self.model.reconstruct(self.batch).numpy()
        outputs = {"zero-filled": self.zero_filled, "model": recon}
        scores = {name: metrics.compute_all(target, image) for name, image in outputs.items()}
        rows = [FigureRow(f"validation {i}", target[i, ..., 0],
                          {name: image[i, ..., 0] for name, image in outputs.items()},
                          {name: (s["psnr"][i], s["ssim"][i]) for name, s in scores.items()})
                for i in range(len(target))]
        figure = comparison_figure(rows, f"epoch {epoch + 1}")
        with self.writer.as_default():
            tf.summary.image("validation examples", figure[None], step=epoch)
        self.writer.flush()
