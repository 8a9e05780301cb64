"""Record, or compare against a record, what every recipe's tiny network gives through train, eval, export, predict.

A refactor must not change behaviour: run this before it (``--record before.npz``) and after it
(``--compare before.npz``).  Every recipe but the segmenter (which reconstructs nothing) is trained for 2 epochs
of 3 steps at 32² on seeded phantoms, deterministically in float32, then scored by ``eval`` (magnitude and, where
it applies, ``--dc``), exported (``serving_default`` and ``from_kspace`` on fixed k-space) and run by ``predict``
from the run folder and from the export.  ``--compare`` passes when every recorded array agrees within
``--tolerance`` (default 1e-6) of its largest magnitude, and lists every key that does not.

    python scripts/check_same_outputs.py --record /tmp/before.npz
    python scripts/check_same_outputs.py --compare /tmp/before.npz
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

SIZE = 32
COMMON = [f"model.image_size={SIZE}", "train.batch_size=4", "train.val_batch_size=8", "train.steps_per_epoch=3",
          "train.epochs=2", "train.patience=0", "train.deterministic=true", "train.precision=float32",
          "train.max_cpu_minutes=null", "data.augment=false"]
DAGAN = ["model.width=0.0625", "vgg.weights=random", "vgg.input_size=32", "data.mask=gaussian1d", "data.ratio=0.3",
         "train.lr=0.0005"]
SRGAN = ["model.width=0.125", "model.blocks=2", "data.patch_size=16", "vgg.weights=random", "vgg.network=vgg16",
         "vgg.layer=block2_conv2"]
CASCADE = ["cascade.filters=8", "cascade.blocks=2", "cascade.convs=3", "data.ratio=0.3", "data.acs=4"]
WASSERSTEIN = ["model.iterations=3", "model.growth=2", "model.filters=4", "data.ratio=0.25", "data.acs=6"]
REFINEMENT = ["model.width=0.25", "discriminator.layers=3", "discriminator.width=0.125", "discriminator.pool_size=6",
              "vgg.weights=random", "vgg.network=vgg16", "vgg.layer=block2_conv2", "data.ratio=0.3", "data.acs=4"]
RECIPES = {"pg": DAGAN, "ppg": DAGAN, "ppgr": DAGAN, "ppgr-complex": DAGAN,
           "srgan-mse": SRGAN, "srgan-vgg": SRGAN, "srgan-hybrid": SRGAN,
           "recnet": CASCADE, "recnet-fast": CASCADE, "cascade-deep": CASCADE, "refinement": REFINEMENT,
           "dcinet": WASSERSTEIN, "wgan": WASSERSTEIN + ["critic.filters=4"], "cwgan": WASSERSTEIN + ["critic.filters=4"],
           "cwgan-agb": WASSERSTEIN + ["critic.filters=4"]}


def phantom(size: int, depth: int, seed: int) -> np.ndarray:
    """``[size, size, depth]`` float32: random ellipses, smoothed."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    y, x, z = np.mgrid[:size, :size, :depth].astype(np.float32)
    volume = np.zeros((size, size, depth), np.float32)
    for _ in range(6):
        cy, cx, cz = rng.uniform(0.3, 0.7, 3) * (size, size, depth)
        ry, rx, rz = rng.uniform(0.15, 0.4, 3) * (size, size, depth)
        volume += rng.uniform(0.3, 1.0) * (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 + ((z - cz) / rz) ** 2 < 1)
    return gaussian_filter(volume, 0.7).astype(np.float32)


def record(work: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    from dagan_tf import recipes
    from dagan_tf.cli import main
    from dagan_tf.data.prepare import PrepareConfig, prepare
    from dagan_tf.export import load_export
    from dagan_tf.training.run import train
    from click.testing import CliRunner

    def cli(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        if result.exit_code != 0:
            raise RuntimeError(f"dagan-tf {' '.join(map(str, args))}: {result.output[-2000:]}")

    volumes = work / "volumes"
    volumes.mkdir()
    for i in range(5):
        nib.save(nib.Nifti1Image(phantom(SIZE, 10, i), np.eye(4)), volumes / f"s{i}.nii.gz")
    data = work / "prepared"
    prepare([str(volumes)], data, PrepareConfig(size=SIZE, split=(0.6, 0.2, 0.2), min_foreground=0.05))
    rng = np.random.default_rng(1)
    mask = (rng.random((2, SIZE, SIZE)) < 0.4).astype(np.float32)
    image = phantom(SIZE, 2, 7).transpose(2, 0, 1) * np.exp(1j * rng.uniform(-1, 1, (2, SIZE, SIZE)))
    kspace0 = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)) * mask
    kspace0 = tf.constant(kspace0.astype(np.complex64))
    out: dict[str, np.ndarray] = {}
    for name, overrides in RECIPES.items():
        extra = [f"stage1.run={work / 'recnet'}"] if name == "refinement" else []
        config = recipes.apply_overrides(recipes.load_recipe(name), COMMON + overrides + extra)
        if name == "refinement":
            from dagan_tf.training.refinement import prepare_config
            config = prepare_config(config)
        run = work / name
        train(run, config, data, verbose=0)
        with open(run / "history.csv") as f:
            rows = list(csv.DictReader(f))
        keys = sorted(k for k in rows[0] if k != "epoch" and not k.endswith(("_seconds", "_minutes")))  # no clocks
        out[f"{name}/history"] = np.array([[float(r[k]) for k in keys] for r in rows])
        for dc in (False, True):
            folder = work / f"{name}-eval{'-dc' if dc else ''}"
            cli("eval", "--run", run, "--data", data, "--no-baselines", "--out", folder, "--regime",
                config["data"]["regime"], *(["--dc"] if dc else []))
            metrics = flatten(json.loads((folder / "metrics.json").read_text()))
            out[f"{name}/eval{'-dc' if dc else ''}"] = np.array(
                [v for k, v in sorted(metrics.items()) if "ms_per_slice" not in k])
        export = work / f"{name}-export"
        cli("export", run, "--out", export, "--precision", "float32")
        network, _, from_kspace = load_export(export)
        served = network(kspace0, tf.constant(mask))
        if isinstance(served, tuple):  # (reconstruction, extras)
            served = {"reconstruction": served[0], **served[1]}
        for key, value in sorted(served.items()):
            out[f"{name}/serving_default/{key}"] = value.numpy()
        planes = {"kspace_real": tf.math.real(kspace0), "kspace_imag": tf.math.imag(kspace0), "mask": tf.constant(mask)}
        for key, value in sorted(from_kspace(**planes).items()):
            out[f"{name}/from_kspace/{key}"] = value.numpy()
        for source, model in (("run", run), ("export", export)):
            target = work / f"{name}-predict-{source}.nii.gz"
            cli("predict", "--model", model, "--input", volumes / "s4.nii.gz", "--out", target, "--precision",
                "float32")
            out[f"{name}/predict-{source}"] = np.asarray(nib.load(target).dataobj, np.float32)
        print(f"{name}: recorded", flush=True)
    return out


def flatten(tree, prefix="") -> dict[str, float]:
    """Numbers of a nested metrics dict by dotted key (strings and lists of strings left out)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix[:-1]: float(tree)}
    if isinstance(tree, list) and tree and all(isinstance(v, (int, float)) for v in tree):
        return {f"{prefix}{i}": float(v) for i, v in enumerate(tree)}
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", type=Path, help="write the outputs to this .npz")
    action.add_argument("--compare", type=Path, help="compare the outputs with this .npz")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--save", type=Path, help="with --compare: also write this run's outputs to this .npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        outputs = record(Path(work))
    if args.save:
        np.savez(args.save, **outputs)
    if args.record:
        np.savez(args.record, **outputs)
        print(f"{len(outputs)} arrays recorded in {args.record}")
        return 0
    reference = dict(np.load(args.compare))
    bad = sorted(set(reference) ^ set(outputs))
    for key in sorted(set(reference) & set(outputs)):
        a, b = reference[key], outputs[key]
        scale = max(float(np.abs(a).max()) if a.size else 0.0, 1e-12)
        if a.shape != b.shape or float(np.abs(a - b).max()) > args.tolerance * scale:
            bad.append(key)
    for key in bad:
        print(f"differs: {key}")
    print(f"{len(reference)} arrays compared, {len(bad)} differ (tolerance {args.tolerance:g} of each array's scale)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
