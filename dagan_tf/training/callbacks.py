"""Callbacks for resumable GAN training: LR schedule, run state (checkpoint, early stopping, NaN) and images."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dagan_tf.errors import DaganError


class HalvingSchedule(keras.callbacks.Callback):
    """``lr = base · 0.5^(epoch // every)`` for both optimizers at each epoch start (stateless: resume-safe)."""

    def __init__(self, base_lr: float, every: int):
        super().__init__()
        self.base_lr, self.every = base_lr, every

    def rate(self, epoch: int) -> float:
        return self.base_lr * 0.5 ** (epoch // self.every) if self.every else self.base_lr

    def on_epoch_begin(self, epoch, logs=None):
        for opt in (self.model.g_optimizer, self.model.d_optimizer):
            opt.learning_rate.assign(self.rate(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.rate(epoch)


class RunState(keras.callbacks.Callback):
    """Checkpoints, early stopping on ``monitor`` and NaN/Inf detection.

    The checkpoint holds G, D, both optimizers, the next epoch and the early-stopping
    state (best value, epochs without improvement); it is written at each epoch end
    by ``tf.train.CheckpointManager`` (data files first, the index file replaced
    last), so a kill leaves the previous checkpoint usable.  The best generator is
    saved to ``best.weights.h5`` (written to a temporary name, then renamed) and
    restored at the end of training.
    """

    def __init__(self, run_dir: str | Path, patience: int = 10, monitor: str = "val_nmse", keep: int = 2):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.patience, self.monitor, self.keep = patience, monitor, keep
        self.next_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="next_epoch")
        self.best = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.stopped_reason: str | None = None
        self.manager: tf.train.CheckpointManager | None = None

    def attach(self, model) -> "RunState":
        """Create the checkpoint for ``model`` (a ConditionalGAN with built optimizers)."""
        self.set_model(model)
        ckpt = tf.train.Checkpoint(generator=model.generator, discriminator=model.discriminator,
                                   g_optimizer=model.g_optimizer, d_optimizer=model.d_optimizer,
                                   next_epoch=self.next_epoch, best=self.best, wait=self.wait)
        self.manager = tf.train.CheckpointManager(ckpt, str(self.run_dir / "checkpoints"), max_to_keep=self.keep)
        return self

    def restore(self) -> int:
        """Restore the latest checkpoint; returns the epoch to start from (0 without checkpoint)."""
        if self.manager.latest_checkpoint is None:
            raise DaganError(f"no checkpoint to resume in {self.run_dir / 'checkpoints'}")
        self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.next_epoch.numpy())

    @property
    def best_weights_path(self) -> Path:
        return self.run_dir / "best.weights.h5"

    def on_train_batch_end(self, batch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not math.isfinite(float(v))]
        if bad:
            self.stopped_reason = (f"{', '.join(bad)} became NaN/Inf at step {batch} of epoch "
                                   f"{int(self.next_epoch.numpy())}; the last good checkpoint is kept "
                                   f"in {self.run_dir / 'checkpoints'}")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_reason:
            return
        value = float((logs or {}).get(self.monitor, math.nan))
        if math.isfinite(value) and value < float(self.best.numpy()):
            self.best.assign(value)
            self.wait.assign(0)
            tmp = self.best_weights_path.with_name(".best.tmp.weights.h5")
            self.model.generator.save_weights(str(tmp))
            os.replace(tmp, self.best_weights_path)
        else:
            self.wait.assign_add(1)
        self.next_epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        if self.patience and int(self.wait.numpy()) >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights_path.exists() and not self.stopped_reason:
            self.model.generator.load_weights(str(self.best_weights_path))


class TimeBudget(keras.callbacks.Callback):
    """Stop training after ``minutes`` of wall-clock time (checked after every batch)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = 60.0 * minutes
        self.start = None

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start > self.seconds:
            self.model.stop_training = True


class ImageGrid(keras.callbacks.Callback):
    """TensorBoard image per epoch: zero-filled | reconstruction | ground truth | |error|×10 for a fixed batch."""

    def __init__(self, log_dir: str | Path, zero_filled: np.ndarray, target: np.ndarray, max_images: int = 4):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))
        self.zero_filled = zero_filled[:max_images]
        self.target = target[:max_images]

    def on_epoch_end(self, epoch, logs=None):
        recon = tf.cast(self.model.generator(self.zero_filled, training=False), tf.float32).numpy()
        tiles = [self.zero_filled, recon, self.target, np.abs(recon - self.target) * 10.0]
        grid = np.clip(np.concatenate([np.concatenate(list(t), axis=0) for t in tiles], axis=1), 0, 1)
        with self.writer.as_default():
            tf.summary.image("zf|recon|gt|err_x10", grid[None], step=epoch)
        self.writer.flush()
