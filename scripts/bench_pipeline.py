"""Images per second of the full training pipeline (read, augment incl. elastic, k-space simulation).

Usage: python scripts/bench_pipeline.py [--data PREPARED_DIR] [--size 256] [--batch 25] [--seconds 20]
       python scripts/bench_pipeline.py --elastic-only   # ms per image of the elastic distortion, one core
       python scripts/bench_pipeline.py --masks          # ms per mask of every kind (--size, --ratio)
Without --data, 200 synthetic slices are written to a temporary prepared folder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_prepared(folder: Path, size: int, n: int = 200) -> Path:
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size), dtype=np.float32)
    np.save(folder / "train_images.npy", images)
    rows = "\n".join(f"{i},s{i % 10},synthetic,{i}" for i in range(n))
    (folder / "train_slices.csv").write_text("index,subject,source,slice\n" + rows + "\n")
    from dagan_tf.data.prepare import PREPARED_FORMAT

    (folder / "manifest.json").write_text(json.dumps({"format": PREPARED_FORMAT}))
    return folder


def elastic_ms_per_image(size: int, batch: int = 8, repeats: int = 10) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from dagan_tf.data.augment import elastic_displacements, elastic_transform

    images = tf.random.uniform((batch, size, size, 1))
    scale = size / 256

    @tf.function
    def warp(seed):
        disp = elastic_displacements(seed, batch, size, size, 765.0 * scale, 25.5 * scale)
        return elastic_transform(images, disp)

    warp(tf.constant([0, 0], tf.int64))
    start = time.perf_counter()
    for i in range(repeats):
        warp(tf.constant([0, i], tf.int64)).numpy()
    ms = (time.perf_counter() - start) / repeats / batch * 1000
    print(f"elastic distortion: {ms:.1f} ms per {size}² image on one core (α=765, σ=25.5 scaled to the size)")


def mask_ms(size: int, ratio: float, repeats: int = 5) -> None:
    """Milliseconds to build one ``size``² mask of every kind (the poisson2d walk is the slow one)."""
    from dagan_tf.masks import MASK_KINDS, make_mask

    for kind in MASK_KINDS:
        start = time.perf_counter()
        for seed in range(repeats):
            make_mask(kind, (size, size), ratio, seed)
        print(f"{kind:11s} {(time.perf_counter() - start) / repeats * 1000:8.1f} ms per {size}² mask at {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mask", default="gaussian2d")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--per-sample-masks", action="store_true")
    parser.add_argument("--elastic-only", action="store_true")
    parser.add_argument("--masks", action="store_true")
    args = parser.parse_args()
    if args.masks:
        mask_ms(args.size, args.ratio)
        return
    if args.elastic_only:
        elastic_ms_per_image(args.size)
        return

    from dagan_tf.data.pipeline import training_dataset
    from dagan_tf.data.prepare import load_split
    from dagan_tf.masks import MaskSpec

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data) if args.data else synthetic_prepared(Path(tmp), args.size)
        split = load_split(folder, "train")
        ds, _ = training_dataset(split, args.batch, MaskSpec(args.mask, args.ratio, per_sample=args.per_sample_masks))
        it = iter(ds)
        next(it)  # warm-up (graph tracing)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            zf, _ = next(it)
            n += int(zf.shape[0])
        rate = n / (time.perf_counter() - start)
    print(f"pipeline: {rate:.1f} images/s ({split.images.shape[1]}², batch {args.batch}, mask {args.mask} "
          f"{args.ratio}, per-sample masks {args.per_sample_masks}, elastic on)")


if __name__ == "__main__":
    main()
