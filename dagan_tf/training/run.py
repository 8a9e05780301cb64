"""Build a recipe's trainer (through :data:`dagan_tf.recipes.TRAINERS`) and run or resume it in a run folder.

Run folder::

    config.yaml         the resolved recipe (with the data folder), commented
    checkpoints/        tf.train checkpoints (trainer state, optimizers, epoch, early-stopping state)
    best.weights.h5     network weights with the best validation score (train.select: the trainer's monitor,
                        e.g. NMSE; the validation FID; or the normalised FID + NMSE sum)
    history.csv         per-epoch logs (appended on resume), with cpu_minutes / wall_minutes for learning curves
    epochs/, selection.json   (train.select fid_nmse) every epoch's network weights and validation scores
    logs/               TensorBoard: losses, metrics, learning rate, image grid

Safety: a new run that fails before its first checkpoint is removed; ``overwrite``
trains in a hidden staging folder beside the run (``.RUN.overwrite``) that
replaces the old run only when training ends, so a failed overwrite leaves the
old run as it was (``resume`` continues a staged run).  SIGINT/SIGTERM stop
training after the current batch, keeping the last epoch checkpoint.  One process
trains a run at a time: a second ``train`` of the same ``--out`` (a resume, or a new
run after the folder was deleted while the first still stops) is refused while the
first holds the lock ``.RUN.lock`` beside the run.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from dagan_tf import recipes
from dagan_tf.data.augment import AugmentConfig, flip_rotate
from dagan_tf.data.pipeline import (batch_stage, evaluation_dataset, evaluation_masks, segmentation_dataset,
                                    training_dataset)
from dagan_tf.data.prepare import load_split
from dagan_tf.errors import DaganError
from dagan_tf.hardware import precision_policy, resolve_precision, visible_gpu_capabilities
from dagan_tf.masks import MaskSpec, sampled_fraction
from dagan_tf.outputs import exclusive_lock, make_dir, replace_path
from dagan_tf.training.callbacks import (ImageGrid, LearningRate, LearningRateSchedule, ReplicatedValidation,
                                        RunClock, RunState, Signals, TimeBudget, TrainingClock, ValidationFID,
                                        checkpoints_newest_first, read_history)
from dagan_tf.training.distribute import cluster_spec, describe, is_chief, make_strategy, synchronise_batch_norm

log = logging.getLogger(__name__)


class TrainingInterrupted(DaganError):
    """SIGINT/SIGTERM stopped training (exit status 130)."""

    exit_code = 130


def mask_spec(config: dict) -> MaskSpec:
    d = config["data"]
    return MaskSpec(d["mask"], d["ratio"], d["mask_seed"], d["acs"], d["per_sample_masks"])


def build_trainer(config: dict) -> keras.Model:
    """The compiled trainer of a validated recipe, from the registry entry of its ``trainer`` key."""
    return recipes.trainer_of(config).load().build_trainer(config)


def staging_dir(run_dir: Path) -> Path:
    """Where ``--overwrite`` builds the new run until it replaces ``run_dir``."""
    return run_dir.with_name(f".{run_dir.name}.overwrite")


def _silent(_: str) -> None:
    pass


def _run_folder_and_config(run_dir: Path, config: dict | None, data, resume: bool, overwrite: bool, chief: bool,
                           budgets: Sequence[str], echo: Callable[[str], None]) -> tuple[Path, dict]:
    """``(work, config)``: the folder :func:`train` writes (``run_dir``, or its staging folder while an
    ``--overwrite`` run replaces a previous one) and the validated recipe (a resumed run's own, with its
    ``budgets``; a new run's with its data folder, after the trainer's ``prepare_config``)."""
    work = staging_dir(run_dir)
    if resume:
        if not (work / "config.yaml").is_file():
            work = run_dir
            if not (run_dir / "config.yaml").is_file():
                raise DaganError(f"{run_dir} is not a run folder (no config.yaml) to resume")
        else:
            echo(f"resuming the unfinished --overwrite run in {work} (it replaces {run_dir} when it ends)")
        config = recipes.load_config_file(work / "config.yaml")
        if budgets:
            config = recipes.apply_overrides(config, list(budgets), resume=True)
        return work, config
    if chief and run_dir.exists() and not run_dir.is_dir():
        raise DaganError(f"--out {run_dir} is a file, not a run folder")
    if chief and run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise DaganError(f"run folder {run_dir} exists; pass --resume to continue it or --overwrite")
    if not (run_dir.exists() and any(run_dir.iterdir())):
        work = run_dir
    config = recipes.validate_config({**config, "data": {**config["data"], "folder": str(Path(data).resolve())}})
    prepare_config = getattr(recipes.trainer_of(config).load(), "prepare_config", None)
    if prepare_config is not None:
        config = recipes.validate_config(prepare_config(config, echo))
    return work, config


def _lost_worker(exc: tf.errors.OpError, folder: Path, run_dir: Path) -> DaganError:
    """The one-line error of a multi-worker run whose cluster lost a worker: what was kept and how to resume."""
    newest = checkpoints_newest_first(folder / "checkpoints")
    kept = (f"the checkpoint of epoch {newest[0].rsplit('-', 1)[1]} is kept; start every worker again with "
            f"'dagan-tf train --out {run_dir} --resume'") if newest else "nothing was saved (no checkpoint yet)"
    reason = next((line.strip() for line in exc.message.splitlines() if "aborted by" in line), type(exc).__name__)
    return DaganError(f"the multi-worker cluster lost a worker ({reason}); {kept}")


def train(run_dir: str | Path, config: dict | None = None, data: str | Path | None = None,
          resume: bool = False, epochs: int | None = None, overwrite: bool = False,
          verbose: int | None = None, echo: Callable[[str], None] = _silent, strategy: str | None = None,
          callbacks: Sequence[keras.callbacks.Callback] = (), budgets: Sequence[str] = ()) -> dict:
    """Train a validated recipe ``config`` on the prepared folder ``data`` into ``run_dir``, or resume it.

    ``echo`` receives progress lines (start summary, resume point, how training ended);
    ``verbose`` is Keras' (default: a progress bar on a terminal, one line per epoch otherwise,
    none when ``echo`` is silent); ``strategy`` overrides ``train.strategy`` (also on resume); ``callbacks``
    are added to the run's own (after them); ``budgets`` are ``KEY=VALUE`` overrides of
    :data:`dagan_tf.recipes.RESUME_KEYS` (the time budgets), the only keys a resume may change.
    Under ``multi-worker`` every worker calls this with the same arguments; only the chief
    writes ``run_dir`` (the others write to a :func:`worker_folder`).  Returns the history of this call.  Raises
    :class:`DaganError` on bad input and NaN/Inf losses, :class:`TrainingInterrupted` on a signal.
    """
    run_dir = Path(run_dir)
    chief = is_chief()
    work, config = _run_folder_and_config(run_dir, config, data, resume, overwrite, chief, budgets, echo)
    if epochs is not None:
        config["train"]["epochs"] = int(epochs)
    if strategy is not None:
        config["train"]["strategy"] = strategy
    # Before any other TensorFlow call: a multi-worker strategy configures the runtime's collectives.
    if config["train"]["strategy"] == "multi-worker":
        echo(f"multi-worker: task {cluster_spec()[1]} waits for every worker of TF_CONFIG")
    distribution = make_strategy(config["train"]["strategy"])
    train_split, val_split = _check_data(config, resume, echo)
    spec = mask_spec(config)
    size = config["model"]["image_size"]
    fraction = sampled_fraction(spec.build((size, size)))
    t = config["train"]
    if t["batch_size"] % distribution.num_replicas_in_sync:
        raise DaganError(f"train.batch_size {t['batch_size']} is not a multiple of the "
                         f"{distribution.num_replicas_in_sync} replicas of train.strategy {t['strategy']}")
    precision = resolve_precision(t["precision"], gpu_compute_capabilities=visible_gpu_capabilities())
    keras.utils.set_random_seed(t["seed"])
    if t["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    if verbose is None:
        verbose = 0 if echo is _silent else (1 if sys.stdout.isatty() else 2)

    def fit(folder: Path):
        try:
            with precision_policy(precision):
                history, state = _fit(folder, config, resume, train_split, val_split, spec, verbose, echo,
                                      f"{precision} (precision: {t['precision']})", fraction, distribution,
                                      list(callbacks))
        except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as exc:
            if not isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy):
                raise
            raise _lost_worker(exc, folder, run_dir) from None
        _raise_if_unfinished(state, folder, run_dir)
        return history

    if not chief:
        echo(f"multi-worker: this worker is not the chief; the chief writes {run_dir}")
        with worker_folder(work if resume else None) as scratch:
            return fit(scratch)
    with exclusive_lock(run_dir, "run folder"):  # one trainer per run, its staging folder included
        existed = work.exists()
        if not resume:
            if work != run_dir:
                shutil.rmtree(work, ignore_errors=True)  # a stale staging folder of an earlier overwrite
                existed = False
            make_dir(work)
        try:
            history = fit(work)
        except BaseException:
            if not resume and not _has_checkpoint(work):
                _discard(work, keep_folder=existed)
            raise
        if work != run_dir:
            replace_path(work, run_dir)
    return history


@contextlib.contextmanager
def worker_folder(chief_work: Path | None):
    """A temporary run folder for a non-chief worker of a multi-worker run (it takes part in every
    checkpoint write, which the chief alone keeps), removed at the end; with ``chief_work`` (``--resume``) a
    copy of the chief's folder to restore from, so ``--out`` must be on a file system every worker sees."""
    scratch = Path(tempfile.mkdtemp(prefix="dagan-tf-worker-"))
    try:
        if chief_work is not None:
            shutil.copytree(chief_work, scratch / "run", ignore=shutil.ignore_patterns("logs"))
        else:
            (scratch / "run").mkdir()
        yield scratch / "run"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _raise_if_unfinished(state: RunState, work: Path, run_dir: Path) -> None:
    """Raise :class:`TrainingInterrupted` after a signal, :class:`DaganError` after NaN/Inf losses."""
    kept = _has_checkpoint(work)
    where = (f"the checkpoint of epoch {int(state.next_epoch.numpy())} is kept; "
             f"'dagan-tf train --out {run_dir} --resume' continues the run") if kept \
        else "nothing was saved (no checkpoint yet)"
    if state.interrupted:
        raise TrainingInterrupted(f"{state.interrupted}: {where}")
    if state.stopped_reason:
        raise DaganError(f"training stopped: {state.stopped_reason}; {where}")


def _discard(work: Path, keep_folder: bool) -> None:
    """Remove what a failed new run wrote: the folder, or only its contents when it existed (empty) before."""
    if not keep_folder:
        shutil.rmtree(work, ignore_errors=True)
        return
    for child in work.iterdir():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def _has_checkpoint(work: Path) -> bool:
    return any((work / "checkpoints").glob("ckpt-*.index"))


def _check_data(config: dict, resume: bool, echo):
    """The train and validation splits; a new run adopts the data's image size (saying so)."""
    data = Path(config["data"]["folder"])
    train_split, val_split = load_split(data, "train"), load_split(data, "val")
    h, w = train_split.images.shape[1:]
    size = config["model"]["image_size"]
    if (h, w) != (size, size):
        if resume or h != w:
            raise DaganError(f"{data} holds {h}×{w} slices but the run's model.image_size is {size}")
        echo(f"model.image_size {size} -> {h} to match the prepared data in {data}")
        config["model"]["image_size"] = h
        recipes.validate_config(config)
    n, batch = len(train_split.images), config["train"]["batch_size"]
    if n < batch:
        raise DaganError(f"train.batch_size {batch} exceeds the {n} training slices of {data}")
    return train_split, val_split


def augment_of(config: dict) -> AugmentConfig | None:
    """The augmentation of a recipe's ``data`` section (``None`` without)."""
    d = config["data"]
    if not d["augment"]:
        return None
    if d["augment_style"] == "flip_rotate":
        return flip_rotate(d["max_rotation"])
    return AugmentConfig(rotation_deg=d["max_rotation"], elastic_per_image=d["elastic_per_image"])


def _spent_minutes(work: Path, clock: str) -> float:
    """Minutes of ``clock`` (``cpu`` or ``wall``) a resumed run spent before (the last ``cpu_minutes`` or
    ``wall_minutes`` of its history; 0 without)."""
    rows = read_history(work / "history.csv")
    return float(rows[-1].get(f"{clock}_minutes") or 0.0) if rows else 0.0


def learning_rate_schedule(train: dict, steps_per_epoch: int, spent: dict[str, float]) -> LearningRateSchedule:
    """The schedule of a recipe's ``train`` section; a cosine decays over ``max_cpu_minutes``, else
    ``max_minutes``, counted from the run's start (``spent`` minutes per clock before this invocation), else
    over ``epochs × steps_per_epoch`` steps."""
    rate = LearningRate(train["lr_schedule"], train["lr"], train["lr_warmup_steps"], train["lr_halve_every"],
                        train["lr_min"])
    clock = next(((name, train[key]) for name, key in (("cpu", "max_cpu_minutes"), ("wall", "max_minutes"))
                  if train[key] and rate.kind == "cosine"), None)
    return LearningRateSchedule(rate, steps_per_epoch, train["epochs"] * steps_per_epoch,
                                RunClock(clock[0], spent[clock[0]]) if clock else None,
                                clock[1] if clock else None)


def run_datasets(config: dict, train_split, val_split, spec: MaskSpec, start_step: int, echo):
    """``(training, validation, batch_stage or None)`` of a run: the batches its trainer's registry entry asks for
    (:meth:`~dagan_tf.recipes.Trainer.batch_kind`; an image network's channels from its contract), the training
    stream starting at ``start_step``; with augmentation and simulation on the device, the stage that finishes each
    raw training batch in the step."""
    t, d = config["train"], config["data"]
    batches = recipes.trainer_of(config).batch_kind(config)
    if batches == "labels":
        return (segmentation_dataset(train_split, t["batch_size"], t["seed"], start_step),
                segmentation_dataset(val_split, t["val_batch_size"], start_step=None), None)
    with_kspace = batches == "kspace"
    contract = recipes.network_contract(config)
    complex_images = contract.takes == "image" and contract.channels == 2
    on_device = d["augment_on"] == "device" or (
        d["augment_on"] == "auto" and bool(tf.config.list_logical_devices("GPU")))
    augment = augment_of(config)
    train_ds, _ = training_dataset(train_split, t["batch_size"], spec, t["seed"], start_step, augment, with_kspace,
                                   d["regime"], complex_images, patch_size=d["patch_size"], on_device=on_device)
    echo(f"augmentation and simulation on the {'device' if on_device else 'host'}")
    val_ds = evaluation_dataset(val_split, t["val_batch_size"], evaluation_masks(val_split, spec), with_kspace,
                                regime=d["regime"], phase_seed=t["seed"], split_key=1, complex_images=complex_images)
    stage = batch_stage(augment, with_kspace, complex_images, d["patch_size"]) if on_device else None
    return train_ds, val_ds, stage


def run_callbacks(config: dict, work: Path, val_ds, state: RunState, resume: bool) -> list:
    """The run's own callbacks after the schedule: the FID of a selection by FID (before ``state``, which reads
    it), ``state``, the history and TensorBoard logs, and the validation figure of reconstruction trainers."""
    t = config["train"]
    fid = []
    if t["select"] != "monitor":
        from dagan_tf.models.fid import FIDFeatures

        with precision_policy("float32"):
            fid = [ValidationFID(FIDFeatures(t["fid_weights"]), val_ds)]
    batches = recipes.trainer_of(config).batch_kind(config)
    figure = [ImageGrid(work / "logs", next(iter(val_ds)))] if batches != "labels" else []
    return [*fid, state, TrainingClock(work / "history.csv"),
            keras.callbacks.CSVLogger(str(work / "history.csv"), append=resume),
            keras.callbacks.TensorBoard(str(work / "logs"), write_graph=False), *figure]


def _fit(work: Path, config: dict, resume: bool, train_split, val_split, spec, verbose, echo, precision,
         fraction, distribution: tf.distribute.Strategy, extra_callbacks: list):
    t = config["train"]
    with distribution.scope():
        model = build_trainer(config)
    if t["sync_batch_norm"]:
        synchronise_batch_norm(model)
    if t["jit_compile"] != "auto":
        model.jit_compile = t["jit_compile"] == "xla"
    state = RunState(work, t["patience"], recipes.trainer_of(config).monitor, keep_last=t["keep"] == "last",
                     select=t["select"], select_from_epoch=t["select_from_epoch"]).attach(model)
    first_epoch = 0
    if resume:
        first_epoch, skipped = state.restore()
        for note in skipped:
            echo(f"warning: skipped damaged checkpoint {note}")
        if first_epoch is None:
            echo(f"no intact checkpoint in {work / 'checkpoints'}: restarting the run from epoch 0")
            first_epoch, resume = 0, False
            for stale in ("history.csv", "best.weights.h5"):
                (work / stale).unlink(missing_ok=True)
    (work / "config.yaml").write_text(recipes.dump(config))
    steps = t["steps_per_epoch"] or len(train_split.images) // t["batch_size"]
    if first_epoch >= t["epochs"]:
        echo(f"the run already reached {first_epoch} epochs (train.epochs = {t['epochs']}); nothing to do")
        return {}, state
    spent = {clock: _spent_minutes(work, clock) if resume else 0.0 for clock in ("cpu", "wall")}
    if t["max_cpu_minutes"] and spent["cpu"] >= t["max_cpu_minutes"]:
        echo(f"the run already spent {spent['cpu']:.1f} CPU-minutes (train.max_cpu_minutes = "
             f"{t['max_cpu_minutes']:g}); nothing to do")
        return {}, state
    params = sum(int(np.prod(v.shape)) for v in model.network.weights)
    d = config["data"]
    echo(f"recipe {config['recipe']} ({config['trainer']}): {params / 1e6:.3g} M network parameters, "
         f"{config['model']['image_size']}² images, precision {precision}")
    echo(f"data {d['folder']}: {len(train_split.images)} training / {len(val_split.images)} validation slices; "
         f"mask {d['mask']}" + (f" ratio {d['ratio']}" if d["ratio"] is not None else "")
         + f" (sampled fraction {fraction:.4f}), "
         + (f"{train_split.coils}-coil k-space" if train_split.kspace is not None else f"{d['regime']} regime"))
    echo(f"{steps} steps per epoch of batch {t['batch_size']}, up to {t['epochs']} epochs; run folder {work}; "
         f"{describe(distribution)}" + (", XLA" if model.jit_compile else ""))
    if resume:
        echo(f"resuming at epoch {first_epoch}, step {first_epoch * steps}")
    train_ds, val_ds, stage = run_datasets(config, train_split, val_split, spec, first_epoch * steps, echo)
    model.batch_stage = stage
    if isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy):
        # Every worker builds the same batches (a function of seed and step) and keeps its replicas' slices.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds = train_ds.with_options(options)
    # With several replicas every worker validates on its own, outside the distribution (no worker waits).
    replicated = [ReplicatedValidation(val_ds)] if distribution.num_replicas_in_sync > 1 else []
    budgets = ([TimeBudget(t["max_minutes"])] if t["max_minutes"] else []) \
        + ([TimeBudget(t["max_cpu_minutes"], "cpu", spent["cpu"])] if t["max_cpu_minutes"] else [])
    callbacks = [learning_rate_schedule(t, steps, spent), *replicated,
                 *run_callbacks(config, work, val_ds, state, resume), *budgets, *extra_callbacks]
    with Signals(state):
        history = model.fit(train_ds, epochs=t["epochs"], initial_epoch=first_epoch, steps_per_epoch=steps,
                            validation_data=None if replicated else val_ds, callbacks=callbacks, verbose=verbose,
                            shuffle=False)
    ended = [budget for budget in budgets if budget.cut_short]
    if ended:
        run_steps = first_epoch * steps + ended[0].steps
        echo(f"{ended[0].clock} time budget of {ended[0].minutes:g} min reached: training cut short after "
             f"{run_steps} steps of the run (epoch {int(state.next_epoch.numpy())}"
             + (f"; {ended[0].steps} since the resume)" if resume else ")"))
    elif not state.interrupted and not state.stopped_reason:
        best = float(state.best.numpy())
        selected = f"; selected epoch {best:.0f} (normalised FID + NMSE)" if t["select"] == "fid_nmse" \
            else f"; best {state.monitor} {best:.5g}"
        echo(f"training ended after epoch {int(state.next_epoch.numpy())}" + (selected if math.isfinite(best) else ""))
    return history.history, state
