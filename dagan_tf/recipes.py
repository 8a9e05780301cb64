"""Recipes: one YAML file per paper setup (``configs/recipes/*.yaml``), overridable with ``key=value``.

Every recipe names its trainer (``trainer: conditional_gan``); :data:`TRAINERS`
is the one registry that maps a trainer to its recipe schema (the sections
it reads, shared ``data`` and ``train`` sections included) and to the module
that builds it.  A recipe is validated once, against that schema, before any
work (:func:`validate_config`).  Pure Python (no TensorFlow), so recipe errors
come back fast.  Only ``yaml.safe_load`` is used.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Protocol

import yaml

from dagan_tf import schema
from dagan_tf.contract import NetworkContract
from dagan_tf.errors import DaganError
from dagan_tf.masks import MASK_KINDS
from dagan_tf.schema import Field

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")  # dagan_tf.training.distribute
JIT_COMPILE = ("auto", "xla", "none")  # strings: YAML reads on/off and yes/no as booleans
# Keys renamed so that each name means one thing; the old names still work, with a warning.
RENAMED_KEYS = {"model.arch": "model.generator", "vgg.arch": "vgg.network", "loss.vgg": "loss.perceptual"}

log = logging.getLogger(__name__)


def _mask_kind_or_file(value: str) -> str | None:
    if value in MASK_KINDS:
        return None
    if value.endswith(".mat"):
        return None if os.path.isfile(value) else f"mask file not found: {value}"
    return f"unknown mask kind {value!r}; valid kinds: {', '.join(MASK_KINDS)} or a DAGAN .mat file"


TOP_LEVEL = {
    "recipe": Field("str", "recipe name"),
    "description": Field("str", "one-line description", nullable=True),
    "settings": Field("choice", "whose settings: paper = the paper's or its public code's; ours = chosen here to "
                                "converge within a CPU budget (the description says what differs)",
                      choices=("paper", "ours"), default="paper"),
}

DATA = {
    "mask": Field("str", "mask kind (gaussian1d, gaussian2d, poisson2d, vds1d, equispaced, random1d) "
                         "or a DAGAN .mat mask file", check=_mask_kind_or_file),
    "ratio": Field("float", "sampled fraction; null with a .mat mask file (it has its own)", 0, 1,
                   low_open=True, nullable=True),
    "mask_seed": Field("int", "seed of the mask", 0),
    "acs": Field("int", "fully sampled centre lines (1-D kinds) or block side (2-D); null = the kind's default",
                 0, nullable=True),
    "per_sample_masks": Field("bool", "a fresh mask per training image (the original uses one fixed mask)"),
    "augment": Field("bool", "flips, rotation, shift, zoom, brightness and elastic deformation"),
    "augment_on": Field("choice", "where training batches are augmented and undersampled: host = the tf.data "
                                  "pipeline; device = inside the training step, on each replica's device; auto = "
                                  "device when a GPU is visible", choices=("auto", "host", "device"), default="auto"),
    "augment_style": Field("choice", "dagan = flips, rotation, shift, zoom, brightness and elastic deformation "
                                     "(DAGAN); flip_rotate = flips and rotations only (cWGAN-AGB; also on multi-coil "
                                     "k-space: coil images and maps move together)", choices=("dagan", "flip_rotate"),
                           default="dagan"),
    "max_rotation": Field("float", "largest rotation in degrees (DAGAN 10, cWGAN-AGB 20)", 0, 180, default=10.0),
    "elastic_per_image": Field("bool", "one elastic field per image; false = the original's one per batch"),
    "patch_size": Field("int", "train on random patches of this side, cut after undersampling the whole slice "
                               "(null: whole slices)", 8, 4096, nullable=True),
    "regime": Field("choice", "k-space simulation: magnitude = of the real image (the papers'); phase = of "
                              "image·exp(i·smooth random phase), fresh per example", choices=("magnitude", "phase"),
                    default="magnitude"),
    "folder": Field("str", "prepared data folder (set by train)", nullable=True),
}

TRAIN = {
    "epochs": Field("int", "maximum epochs; early stopping usually ends training first", 1),
    "steps_per_epoch": Field("int", "batches per epoch; null = all training slices once", 1, nullable=True),
    "batch_size": Field("int", "training batch size", 1),
    "lr": Field("float", "Adam learning rate", 0, 1, low_open=True),
    "beta1": Field("float", "Adam beta1", 0, 1, high_open=True),
    "lr_schedule": Field("choice", "constant; step = halve every lr_halve_every epochs (the papers' DAGAN); cosine = "
                                   "from lr down to lr_min over the run's budget: max_cpu_minutes (CPU-minutes since "
                                   "the run began), else max_minutes (wall-minutes since it began), else "
                                   "epochs x steps_per_epoch", choices=("constant", "step", "cosine"), default="step"),
    "lr_halve_every": Field("int", "step schedule: halve the learning rate every N epochs (0: never)", 0),
    "lr_warmup_steps": Field("int", "linear warm-up from lr/N to lr over the first N steps (0: none)", 0,
                             default=0),
    "lr_min": Field("float", "cosine schedule: the learning rate at the end of the budget", 0, default=0.0),
    "adam_epsilon": Field("float", "Adam epsilon (1e-8: TF1's and PyTorch's, the papers' code; Keras' default "
                                   "is 1e-7)", 0, 1, low_open=True, default=1e-8),
    "patience": Field("int", "early stopping on validation NMSE after N epochs without gain (0: off)", 0),
    "seed": Field("int", "seed of weights, data order, augmentation and masks", 0),
    "deterministic": Field("bool", "deterministic kernels (bit-identical resume, slower)"),
    "precision": Field("choice", "auto = mixed_bfloat16 where the hardware runs bf16 natively (AVX512-BF16/AMX "
                                 "CPUs, GPUs from Ampere on), mixed_float16 (dynamic loss scaling) on Volta/Turing "
                                 "GPUs, else float32", choices=PRECISIONS),
    "strategy": Field("choice", "tf.distribute strategy: auto = mirrored over the GPUs when there are several, else "
                                "one device; mirrored = one replica per GPU (or logical CPU); multi-worker = "
                                "several machines described by TF_CONFIG", choices=STRATEGIES, default="auto"),
    "sync_batch_norm": Field("bool", "with several replicas, batch-norm statistics over the global batch (one "
                                     "all-reduce per layer) instead of each replica's slice (Keras' default)",
                             default=False),
    "jit_compile": Field("choice", "compile the training step with XLA (xla) or not (none); auto = Keras' choice: "
                                   "none on CPU (measured slower) and with several replicas, xla on one GPU",
                         choices=JIT_COMPILE, default="auto"),
    "val_batch_size": Field("int", "validation batch size", 1),
    "keep": Field("choice", "which weights become best.weights.h5: best = the best validation score (the trainer's "
                            "monitor); last = the last epoch's", choices=("best", "last"), default="best"),
    "max_minutes": Field("float", "wall-clock cap; training stops after the batch that exceeds it",
                         0, low_open=True, nullable=True),
    "max_cpu_minutes": Field("float", "process CPU-time cap (all threads, counted across resumes): an equal "
                                      "budget for comparing recipes on a busy machine; training stops after "
                                      "the batch that exceeds it", 0, low_open=True, nullable=True),
    "select": Field("choice", "what picks best.weights.h5 (with keep: best): monitor = the trainer's validation "
                              "score (NMSE for reconstructions); fid = validation FID; fid_nmse = the lowest sum of "
                              "FID and NMSE, each normalised over the epochs (cWGAN-AGB, Appendix B.3; keeps "
                              "every epoch's weights)", choices=("monitor", "fid", "fid_nmse"), default="monitor"),
    "select_from_epoch": Field("int", "fid / fid_nmse: only epochs from this one (1-based) are candidates "
                                      "(the paper: 200)", 1, default=1),
    "fid_weights": Field("str", "Inception weights (.npz) for the validation FID (select fid / fid_nmse)",
                         nullable=True, default=None),
}

DAGAN_SECTIONS = {
    "model": {
        "image_size": Field("int", "image side (prepared data size)", 16, 4096, multiple_of=4),
        "width": Field("float", "filter multiplier; 0.25 gives a CPU-sized network", 0, 4, low_open=True),
        "max_depth": Field("int", "U-Net levels (the depth also follows the image size)", 2, 8),
        "refine": Field("bool", "output = ramp(G(x) + x) (PPGR)"),
        "channels": Field("int", "1 = magnitude in and out (the paper); 2 = complex DAGAN (real and imaginary "
                                    "parts; use with data.regime: phase)", 1, 2, default=1),
        "generator": Field("choice", "unet = DAGAN's U-Net; resnet = the SRGAN-style ResNet (hybrid-loss thesis)",
                           choices=("unet", "resnet"), default="unet"),
        "blocks": Field("int", "residual blocks of the resnet generator (B)", 1, 64, default=16),
        "zero_init_output": Field("bool", "start the last convolution at zero, so with refine the untrained generator "
                                          "returns its input (ours; the papers start it random)", default=False),
        "discriminator": Field("choice", "dagan = DAGAN's (fixed image size); srgan = SRGAN's eight convolutions "
                                         "with global pooling (any size, patches)", choices=("dagan", "srgan"),
                               default="dagan"),
        "data_consistency": Field("bool", "end the U-Net with hard data consistency, trained through (ours; the "
                                          "paper's future work): the network takes the undersampled k-space and "
                                          "its mask; needs model.channels 2", default=False),
    },
    "loss": {
        "pixel": Field("float", "weight of the pixel loss (g_alpha)", 0),
        "pixel_kind": Field("choice", "ratio = original code ||G-x||/||x||; mse = the paper's MSE",
                            choices=("ratio", "mse")),
        "frequency": Field("float", "weight of the frequency loss (g_beta; code only, the paper has none)", 0),
        "perceptual": Field("float", "weight of the VGG perceptual loss (g_gamma)", 0),
        "adversarial": Field("float", "weight of the adversarial loss (g_adv)", 0),
        "adversarial_warmup_steps": Field("int", "ramp the adversarial weight linearly from 0 over the first N generator "
                                                 "steps (ours; 0 = the papers': full weight from the start)", 0,
                                          default=0),
    },
    "vgg": {
        "network": Field("choice", "feature network", choices=("vgg16", "vgg19")),
        "layer": Field("str", "feature layer; the original's 'conv4' is block4_pool"),
        "weights": Field("str", "imagenet (download) | path to a .weights.h5 file | random (tests only)"),
        "input_size": Field("int", "side the images are resized to before VGG (null: their own size)", 32, 1024,
                            nullable=True),
        "same_pooling": Field("bool", "'same' max pools as the original"),
        "target_prepro": Field("choice", "same = both branches alike; dagan = original min-max + 8-bit target",
                               choices=("same", "dagan")),
        "feature_scale": Field("float", "features are multiplied by this before the MSE (SRGAN: 1/12.75)", 0,
                               low_open=True, default=1.0),
    },
}


CASCADE = {
    "blocks": Field("int", "de-aliasing blocks n_c, each followed by data consistency", 1, 64),
    "convs": Field("int", "convolutions per block n_d (the last back to 2 channels)", 2, 32),
    "filters": Field("int", "filters of the inner convolutions", 1, 1024),
    "residual": Field("bool", "x <- DC(x + CNN(x)) (Schlemper's D5C5); false = x <- DC(CNN(x)) (Seitzer's code)"),
    "kernel_size": Field("int", "convolution side (3: the papers')", 1, 15, default=3),
}

RECNET_SECTIONS = {
    "model": {"image_size": Field("int", "image side (prepared data size)", 8, 4096, multiple_of=4)},
    "cascade": CASCADE,
}

REFINEMENT_SECTIONS = {
    "model": {
        "image_size": Field("int", "image side (prepared data size)", 8, 4096, multiple_of=4),
        "width": Field("float", "filter multiplier of the refinement U-Net (1: 32/64/128)", 0, 4, low_open=True),
        "part": Field("choice", "what is refined: real = RecNet's real channel (the code; real-valued images); "
                                "magnitude = |RecNet| (phase-bearing data)", choices=("real", "magnitude")),
        "scaled_input": Field("bool", "V sees RecNet's output scaled to (-1, 1) (the paper); false = raw (the code)"),
    },
    "cascade": {key: dataclasses.replace(f, help=f.help + " (taken from the stage-1 run)")
                for key, f in CASCADE.items()},
    "stage1": {"run": Field("str", "the RecNet run folder to refine (required to train)", nullable=True)},
    "discriminator": {
        "layers": Field("int", "PatchGAN 4x4 convolutions (6: 64...1024, 1024; needs images >= 4·2^(layers-1))",
                        2, 8),
        "width": Field("float", "filter multiplier", 0, 4, low_open=True),
        "dropout": Field("float", "channel dropout after the last three layers", 0, 1, high_open=True),
        "real_label": Field("float", "one-sided label smoothing: the real label (0.9 = smoothing 0.1)", 0, 1,
                            low_open=True),
        "pool_size": Field("int", "experience-replay pool of generated images (0: off)", 0),
        "pool_probability": Field("float", "probability of showing D a pooled image instead", 0, 1),
    },
    "loss": {
        "adversarial": Field("float", "weight of BCE(D(x̂), 1)", 0),
        "feature_matching": Field("float", "weight of the l1 feature matching", 0),
        "perceptual": Field("float", "weight of the VGG perceptual MSE", 0),
        "penalty": Field("float", "weight of ||Δ||_1 (with normalise: its value at the first step)", 0),
        "normalise": Field("bool", "the paper: divide each term by its first-step value (M, N, O, α); "
                                   "false = the code's fixed weights"),
    },
    "vgg": DAGAN_SECTIONS["vgg"],
}

WASSERSTEIN_SECTIONS = {
    "model": {
        "image_size": Field("int", "image side (prepared data size)", 16, 4096, multiple_of=16),
        "iterations": Field("int", "unrolled iterations N (data consistency + convolutional unit each)", 1, 100),
        "growth": Field("int", "dense connections G: each iteration also sees the previous G outputs "
                               "(1 = the paper's 'no dense')", 1, 100),
        "filters": Field("int", "kernels of the convolutions (K)", 1, 1024),
        "kernel_size": Field("int", "convolution side", 1, 15),
        "residual": Field("bool", "x_i = DC(x_{i-1}) + CNN(...) (the iterative networks DCI-Net builds on); "
                                  "false = CNN(...)"),
    },
    "critic": {
        "kind": Field("choice", "none = DCI-Net on the MSE alone; image = WGAN critic on the image; pair = cWGAN "
                                "critic on (zero-filled, image)", choices=("none", "image", "pair")),
        "filters": Field("int", "filters of the first of the four stride-2 convolutions (doubling)", 1, 1024),
        "clip": Field("float", "WGAN weight clipping c: every critic weight in [-c, c]", 0, low_open=True),
        "steps": Field("int", "critic updates per generator update (n_critic)", 1, 100),
    },
    "loss": {
        "mse": Field("float", "weight of the MSE (the cWGAN's lambda_MSE: 100; with AGB: 1)", 0),
        "mse_on": Field("choice", "complex = real/imaginary channels against the SENSE-combined fully sampled "
                                  "image; magnitude = magnitudes", choices=("complex", "magnitude")),
        "adversarial": Field("float", "weight of the Wasserstein generator term -D(z, G)", 0),
    },
    "agb": {
        "enabled": Field("bool", "Adaptive Gradient Balancing (Alg. 1); false = beta fixed at 1"),
        "beta_init": Field("float", "initial beta (Alg. 1: 10)", 0, low_open=True),
        "ratio": Field("float", "beta grows when gma > pma * ratio (Alg. 1: 10)", 0, low_open=True),
        "rate": Field("float", "beta <- beta (1 + rate), gma <- gma (1 - rate) (Alg. 1: 0.1)", 0, 1, low_open=True,
                      high_open=True),
        "ema": Field("float", "moving-average factor of gma and pma (Alg. 1's lambda: 0.99)", 0, 1, high_open=True),
    },
}

SEGMENTER_SECTIONS = {
    "model": {
        "image_size": Field("int", "image side (prepared data size)", 8, 4096, multiple_of=4),
        "width": Field("float", "filter multiplier of the U-Net (1: 32/64/128)", 0, 4, low_open=True),
        "classes": Field("int", "classes including background (taken from the prepared labels)", 2, 256),
    },
    "loss": {
        "cross_entropy": Field("float", "weight of the pixel-wise cross-entropy", 0),
        "dice": Field("float", "weight of 1 - mean soft Dice over the foreground classes", 0),
    },
}


class TrainerModule(Protocol):
    """What a trainer module provides (:meth:`Trainer.load` checks it): the compiled ``keras.Model`` trainer of a
    validated recipe (a :class:`dagan_tf.training.common.TrainerModel`), and the network inference uses.  It may
    also define ``prepare_config(config, echo) -> config``, run before a new run starts."""

    def build_trainer(self, config: dict) -> Any: ...

    def build_network(self, config: dict) -> Any: ...


def _check_vgg_weights(config: dict, source: str) -> None:
    """A VGG loss needs ``vgg.weights`` 'imagenet', 'random' or an existing file."""
    if config["loss"]["perceptual"] and config["vgg"]["weights"] not in ("imagenet", "random") \
            and not os.path.isfile(str(config["vgg"]["weights"])):
        raise DaganError(f"{source}: vgg.weights must be 'imagenet', 'random' or an existing file, "
                         f"got {config['vgg']['weights']!r}")


def _check_data_consistency(config: dict, source: str) -> None:
    """A generator ending in data consistency is the complex U-Net (it replaces complex k-space)."""
    m = config["model"]
    if m["data_consistency"] and (m["channels"] != 2 or m["generator"] != "unet"):
        raise DaganError(f"{source}: model.data_consistency needs model.channels 2 and model.generator unet, "
                         f"got {m['channels']} and {m['generator']}")


def _check_patches(config: dict, source: str) -> None:
    """Patch training needs the SRGAN discriminator (any size) and patches no larger than the image."""
    patch, size = config["data"]["patch_size"], config["model"]["image_size"]
    if patch is not None and (patch > size or config["model"]["discriminator"] != "srgan"):
        raise DaganError(f"{source}: data.patch_size {patch} needs model.adversary srgan (any size) and "
                         f"at most model.image_size {size}")


@dataclass(frozen=True)
class Trainer:
    """A registered training scheme: its recipe sections and the module with ``build_trainer(config)``
    (the compiled ``keras.Model`` trainer) and ``build_network(config)`` (the inference network);
    optionally ``prepare_config(config, echo)`` (checks before a new run starts, e.g. a stage-1 run).

    ``batches`` (:data:`BATCH_KINDS`, the types of :mod:`dagan_tf.data.batches`): ``images`` =
    ``ImagePair``, ``labels`` = ``LabelledBatch``; a network that takes k-space gets ``KSpaceBatch``, whatever
    this says (:meth:`batch_kind`).  ``monitor`` (minimised) picks
    ``best.weights.h5`` and drives early stopping.  ``takes``, ``extras`` and ``stage1`` declare the network's
    :class:`~dagan_tf.contract.NetworkContract` (:meth:`contract`).
    """

    sections: dict
    module: str
    batches: str = "images"
    monitor: str = "val_nmse"
    takes: str = "image"
    extras: tuple[str, ...] = ()
    stage1: bool = False
    checks: tuple[Callable[[dict, str], None], ...] = ()  # the trainer's own cross-key checks of a recipe

    @property
    def schema(self) -> dict:
        return {**TOP_LEVEL, "trainer": Field("choice", "training scheme", choices=tuple(TRAINERS)),
                **self.sections, "data": DATA, "train": TRAIN}

    def load(self) -> "TrainerModule":
        """The trainer module, checked against :class:`TrainerModule` (a missing function is a one-line error)."""
        module = importlib.import_module(self.module)
        missing = [name for name in ("build_trainer", "build_network") if not callable(getattr(module, name, None))]
        if missing:
            raise DaganError(f"trainer module {self.module} has no {' or '.join(missing)}(config)")
        return module

    def contract(self, config: dict) -> NetworkContract:
        """The contract of the network of ``config``: an image network's channels are ``model.channels``; one
        ending in data consistency (``model.data_consistency``) takes k-space, as a cascade does."""
        model = config.get("model", {})
        takes = "kspace" if self.takes == "image" and model.get("data_consistency") else self.takes
        channels = model.get("channels", 1) if takes == "image" else 2
        return NetworkContract(takes, channels, self.extras, self.stage1)

    def batch_kind(self, config: dict) -> str:
        """The batches (:data:`BATCH_KINDS`) training ``config`` needs: ``kspace`` for a network that takes k-space
        (:meth:`contract`), else ``batches``."""
        return "kspace" if self.contract(config).takes != "image" else self.batches


TRAINERS: dict[str, Trainer] = {
    "conditional_gan": Trainer(DAGAN_SECTIONS, "dagan_tf.training.cgan", checks=(_check_patches, _check_vgg_weights,
                                                                                     _check_data_consistency)),
    "supervised": Trainer(RECNET_SECTIONS, "dagan_tf.training.supervised", takes="kspace"),
    "refinement_gan": Trainer(REFINEMENT_SECTIONS, "dagan_tf.training.refinement", takes="kspace",
                              extras=("refinement",), stage1=True, checks=(_check_vgg_weights,)),
    "wasserstein": Trainer(WASSERSTEIN_SECTIONS, "dagan_tf.training.wasserstein", takes="coil_kspace"),
    "segmentation": Trainer(SEGMENTER_SECTIONS, "dagan_tf.training.segmentation", batches="labels",
                            monitor="val_dice_loss"),
}
BATCH_KINDS = ("images", "kspace", "labels")


def recipe_dir():
    """``configs/recipes``: installed as ``dagan_tf.configs``, or beside the package in a source checkout."""
    try:
        return resources.files("dagan_tf.configs") / "recipes"
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs" / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in recipe_dir().iterdir() if p.name.endswith(".yaml"))


def _parse(text: str, source: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DaganError(f"{source}{where}: not valid YAML ({problem})") from None


def trainer_of(config: dict, source: str = "recipe") -> Trainer:
    name = config.get("trainer") if isinstance(config, dict) else None
    if name not in TRAINERS:
        raise DaganError(f"{source}: key trainer must be one of {', '.join(TRAINERS)}, got {name!r}")
    return TRAINERS[name]


def network_contract(config: dict) -> NetworkContract:
    """What the network of a validated ``config`` takes and returns (its trainer's declaration)."""
    return trainer_of(config).contract(config)


def renamed_key(key: str, source: str) -> str:
    """The current name of the recipe key ``section.key`` (a warning when ``key`` is a :data:`RENAMED_KEYS` one)."""
    if key in RENAMED_KEYS:
        log.warning(f"{source}: key {key} is deprecated; use {RENAMED_KEYS[key]}")
    return RENAMED_KEYS.get(key, key)


def _rename_keys(config: dict, source: str) -> dict:
    """``config`` with its deprecated keys under their new names (an error when both are given)."""
    config = dict(config)
    for old, new in RENAMED_KEYS.items():
        (section, leaf), (_, new_leaf) = old.split("."), new.split(".")
        if isinstance(config.get(section), dict) and leaf in config[section]:
            if new_leaf in config[section]:
                raise DaganError(f"{source}: give {new} only ({old} is its deprecated name)")
            renamed_key(old, source)
            config[section] = {(new_leaf if k == leaf else k): v for k, v in config[section].items()}
    return config


def validate_config(config, source: str = "recipe") -> dict:
    """The validated (type-converted) recipe; raises a one-line error naming the first bad key.  Deprecated
    keys (:data:`RENAMED_KEYS`) are read under their new names."""
    if not isinstance(config, dict):
        raise DaganError(f"{source} must be a mapping of sections, got {type(config).__name__}")
    config = schema.validate(_rename_keys(config, source), trainer_of(config, source).schema, source)
    d = config["data"]
    if d["mask"].endswith(".mat"):
        if d["per_sample_masks"]:
            raise DaganError(f"{source}: data.per_sample_masks needs a mask kind, not the file {d['mask']}")
    elif d["ratio"] is None:
        raise DaganError(f"{source}: data.ratio is required for mask kind {d['mask']}")
    if d.get("patch_size") is not None and trainer_of(config).batch_kind(config) != "images":
        raise DaganError(f"{source}: data.patch_size applies to image-to-image trainers, not {config['trainer']}")
    t = config["train"]
    if t["lr_halve_every"] and t["lr_schedule"] != "step":
        raise DaganError(f"{source}: train.lr_halve_every {t['lr_halve_every']} needs train.lr_schedule step, "
                         f"not {t['lr_schedule']}")
    if t["lr_schedule"] == "cosine" and t["lr_min"] >= t["lr"]:
        raise DaganError(f"{source}: train.lr_min {t['lr_min']:g} must be below train.lr {t['lr']:g}")
    if t["select"] != "monitor":
        if trainer_of(config).batch_kind(config) == "labels":
            raise DaganError(f"{source}: train.select {t['select']} needs a reconstruction trainer, "
                             f"not {config['trainer']}")
        if t["fid_weights"] is None or not os.path.isfile(t["fid_weights"]):
            raise DaganError(f"{source}: train.select {t['select']} needs train.fid_weights, an existing Inception "
                             f".npz file (got {t['fid_weights']!r})")
        if t["keep"] == "last":
            raise DaganError(f"{source}: train.select {t['select']} picks an epoch; it needs train.keep best")
    for check in trainer_of(config).checks:
        check(config, source)
    return config


def load_recipe(name: str) -> dict:
    """The recipe ``name`` (e.g. ``ppgr``) as a validated nested dict."""
    names = recipe_names()
    if name not in names:
        raise DaganError(f"unknown recipe {name!r}; valid recipes: {', '.join(names)} (or a .yaml file)")
    source = f"recipe {name}"
    return validate_config(_parse((recipe_dir() / f"{name}.yaml").read_text(), source), source)


def load_config_file(path: str | Path) -> dict:
    """A recipe (or a run's ``config.yaml``) from a file, validated."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DaganError(f"cannot read config {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return validate_config(_parse(text, str(path)), str(path))


def load(recipe: str) -> dict:
    """A recipe by name, or from a ``.yaml`` file when ``recipe`` is an existing file."""
    return load_config_file(recipe) if Path(recipe).is_file() else load_recipe(recipe)


RESUME_KEYS = ("train.max_minutes", "train.max_cpu_minutes")  # the keys ``train --resume`` may ``--set``


def apply_overrides(config: dict, overrides: list[str], resume: bool = False) -> dict:
    """A validated copy of ``config`` with ``section.key=value`` overrides (values parsed as YAML scalars);
    with ``resume`` only the :data:`RESUME_KEYS` (the time budgets)."""
    config = copy.deepcopy(config)
    valid = RESUME_KEYS if resume else schema.leaf_keys(trainer_of(config).schema)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise DaganError(f"--set expects key=value, got {item!r}")
        key = renamed_key(key, "--set")
        if resume and key not in valid:
            raise DaganError(f"--resume takes the run's own config.yaml; --set may change only "
                             f"{' and '.join(valid)}, not {key!r}")
        if key not in valid or "." not in key:
            raise DaganError(f"unknown --set key {key!r}; valid keys: "
                             f"{', '.join(k for k in valid if '.' in k)} (see 'dagan-tf recipes show NAME')")
        section, leaf = key.split(".")
        config[section][leaf] = _parse(text, f"--set {key}")
    return validate_config(config, "--set")


def describe(name: str) -> str:
    """``[paper]`` or ``[ours]`` and the one-line description of recipe ``name``."""
    config = load_recipe(name)
    return f"[{config['settings']}] {config.get('description') or ''}"


def dump(config: dict) -> str:
    """``config`` as YAML with each key's help as a comment (readable back by :func:`load_config_file`)."""
    return schema.render(config, trainer_of(config).schema)
