"""Build a recipe's models and trainer, and run (or resume) training into a run folder.

Run folder::

    config.yaml         the resolved recipe (with the data folder)
    checkpoints/        tf.train checkpoints (G, D, optimizers, epoch, early-stopping state)
    best.weights.h5     generator weights with the best validation NMSE
    history.csv         per-epoch logs (appended on resume)
    logs/               TensorBoard: losses, metrics, learning rate, image grid
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from dagan_tf import recipes
from dagan_tf.data.augment import AugmentConfig
from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks, training_dataset
from dagan_tf.data.prepare import load_split
from dagan_tf.errors import DaganError
from dagan_tf.masks import MaskSpec
from dagan_tf.models.dagan import build_discriminator, build_generator
from dagan_tf.models.vgg import VGGFeatures, dagan_target_prepro
from dagan_tf.training.callbacks import HalvingSchedule, ImageGrid, RunState, TimeBudget
from dagan_tf.training.cgan import PIXEL_LOSSES, ConditionalGAN, LossWeights
from dagan_tf.training.optimizers import TF1_ADAM_EPSILON, FusedAdam

log = logging.getLogger(__name__)
PRECISIONS = ("float32", "mixed_bfloat16")


def mask_spec(config: dict) -> MaskSpec:
    d = config["data"]
    return MaskSpec(str(d["mask"]), d["ratio"], int(d["mask_seed"]), d["acs"], bool(d["per_sample_masks"]))


def generator_from_config(config: dict) -> keras.Model:
    m = config["model"]
    return build_generator(int(m["image_size"]), float(m["width"]), bool(m["refine"]), int(m["max_depth"]))


def build_trainer(config: dict) -> ConditionalGAN:
    """The ConditionalGAN of a resolved recipe, compiled (Adam, β1 from the recipe)."""
    m, loss, vgg, t = config["model"], config["loss"], config["vgg"], config["train"]
    if loss["pixel_kind"] not in PIXEL_LOSSES:
        raise DaganError(f"loss.pixel_kind must be one of {', '.join(PIXEL_LOSSES)}")
    if vgg["target_prepro"] not in ("same", "dagan"):
        raise DaganError("vgg.target_prepro must be 'same' or 'dagan'")
    features = None
    if float(loss["vgg"]):
        features = VGGFeatures(vgg["arch"], vgg["layer"], str(vgg["weights"]), int(vgg["input_size"]),
                               bool(vgg["same_pooling"]))
    weights = LossWeights(float(loss["pixel"]), float(loss["frequency"]), float(loss["vgg"]),
                          float(loss["adversarial"]))
    model = ConditionalGAN(generator_from_config(config),
                           build_discriminator(int(m["image_size"]), float(m["width"])),
                           features, weights, loss["pixel_kind"],
                           dagan_target_prepro if vgg["target_prepro"] == "dagan" else None)
    model.compile(g_optimizer=FusedAdam(float(t["lr"]), beta_1=float(t["beta1"]), epsilon=TF1_ADAM_EPSILON),
                  d_optimizer=FusedAdam(float(t["lr"]), beta_1=float(t["beta1"]), epsilon=TF1_ADAM_EPSILON))
    model.build_optimizers()
    return model


@contextlib.contextmanager
def precision_policy(name: str):
    """Build models under the Keras dtype policy ``name``; the previous global policy is restored after."""
    if name not in PRECISIONS:
        raise DaganError(f"train.precision must be one of {', '.join(PRECISIONS)}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _setup_runtime(t: dict) -> None:
    keras.utils.set_random_seed(int(t["seed"]))
    if t["deterministic"]:
        tf.config.experimental.enable_op_determinism()


def _check_data(config: dict, data: Path):
    train, val = load_split(data, "train"), load_split(data, "val")
    size = int(config["model"]["image_size"])
    if train.images.shape[1:] != (size, size):
        raise DaganError(f"{data} holds {train.images.shape[1]}×{train.images.shape[2]} slices but "
                         f"model.image_size is {size}; re-run prepare with --size {size} or --set model.image_size")
    return train, val


def train(run_dir: str | Path, config: dict | None = None, data: str | Path | None = None,
          resume: bool = False, epochs: int | None = None, overwrite: bool = False,
          verbose: int | str = "auto") -> dict:
    """Train a recipe (``config`` with ``data``) into ``run_dir``, or resume the run there.

    Returns the history dict of this call.  Raises :class:`DaganError` on NaN/Inf losses.
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise DaganError(f"{run_dir} is not a run folder (no config.yaml) to resume")
        config = recipes.load_config_file(run_dir / "config.yaml")
    else:
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise DaganError(f"run folder {run_dir} exists; pass --resume to continue it or --overwrite")
        config["data"]["folder"] = str(Path(data).resolve())
    if epochs is not None:
        config["train"]["epochs"] = int(epochs)
    data = Path(config["data"]["folder"])
    t = config["train"]
    spec = mask_spec(config)
    spec.validate()
    train_split, val_split = _check_data(config, data)
    _setup_runtime(t)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    with precision_policy(t["precision"]):
        return _fit(run_dir, config, resume, train_split, val_split, spec, verbose)


def _fit(run_dir: Path, config: dict, resume: bool, train_split, val_split, spec, verbose) -> dict:
    t = config["train"]
    model = build_trainer(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(recipes.dump(config))
    state = RunState(run_dir, int(t["patience"])).attach(model)
    first_epoch = state.restore() if resume else 0
    if first_epoch >= int(t["epochs"]):
        log.warning("run already reached %d epochs", first_epoch)
        return {}
    augment = AugmentConfig(elastic_per_image=bool(config["data"]["elastic_per_image"])) \
        if config["data"]["augment"] else None
    steps = int(t["steps_per_epoch"] or len(train_split.images) // int(t["batch_size"]))
    train_ds, _ = training_dataset(train_split, int(t["batch_size"]), spec, int(t["seed"]), first_epoch * steps,
                                   augment)
    val_ds = evaluation_dataset(val_split, int(t["val_batch_size"]), evaluation_masks(val_split, spec))
    zf, target = next(iter(val_ds))
    callbacks = [
        HalvingSchedule(float(t["lr"]), int(t["lr_halve_every"])),
        state,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        ImageGrid(run_dir / "logs", zf.numpy(), target.numpy()),
    ] + ([TimeBudget(float(t["max_minutes"]))] if t.get("max_minutes") else [])
    history = model.fit(train_ds, epochs=int(t["epochs"]), initial_epoch=first_epoch, steps_per_epoch=steps,
                        validation_data=val_ds, callbacks=callbacks, verbose=verbose, shuffle=False)
    if state.stopped_reason:
        raise DaganError(f"training stopped: {state.stopped_reason}")
    return history.history
