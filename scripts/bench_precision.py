"""What bf16 inference costs in accuracy: a run's network in float32 and in bfloat16 on every slice of a split.

Both copies are built as ``eval``/``export`` build them (``load_run_network(inference=True, precision=…)``) and
run on the same k-space (the run's mask and regime, as ``eval`` simulates it).  Reports each precision's PSNR and
SSIM (per-volume data range, the package's policy), their differences (bfloat16 − float32: mean, and the worst
slice), and the largest absolute difference between the two reconstructions, also as a fraction of the slice's
data range.  ``--dc`` applies hard data consistency to both, as ``eval --dc`` does.

Usage: python scripts/bench_precision.py --run RUN --data PREPARED [--split test] [--dc] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PRECISIONS = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--dc", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the report to this JSON file")
    args = parser.parse_args()

    from dagan_tf import metrics, recipes
    from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks
    from dagan_tf.data.prepare import SPLITS, load_split
    from dagan_tf.hardware import cpu_info
    from dagan_tf.inference import batch_reconstructor
    from dagan_tf.training.run import mask_spec
    from dagan_tf.training.trained import load_run_network

    config = recipes.load_config_file(Path(args.run) / "config.yaml")
    contract = recipes.network_contract(config)
    reconstruct = {}
    for precision in PRECISIONS:
        network, _ = load_run_network(args.run, inference=True, precision=precision)
        reconstruct[precision] = batch_reconstructor(network, contract, args.dc)
    prepared = load_split(args.data, args.split)
    ranges = metrics.volume_data_ranges(np.asarray(prepared.images), prepared.subjects)
    masks = evaluation_masks(prepared, mask_spec(config))
    scores = {p: {"psnr": [], "ssim": []} for p in PRECISIONS}
    max_abs, max_rel, start = 0.0, 0.0, 0
    for batch in evaluation_dataset(prepared, args.batch, masks, True, None, config["data"]["regime"], 0,
                                    SPLITS.index(args.split)):
        b = int(batch.target.shape[0])
        batch_ranges = ranges[start:start + b]
        outputs = {p: reconstruct[p](batch).numpy() for p in PRECISIONS}
        for p, image in outputs.items():
            values = metrics.compute_all(batch.target, image, batch_ranges)
            scores[p]["psnr"].append(values["psnr"])
            scores[p]["ssim"].append(values["ssim"])
        diff = np.abs(outputs["bfloat16"] - outputs["float32"]).reshape(b, -1).max(axis=1)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / batch_ranges).max()))
        start += b
    per_slice = {p: {m: np.concatenate(v) for m, v in s.items()} for p, s in scores.items()}
    delta = {m: per_slice["bfloat16"][m] - per_slice["float32"][m] for m in ("psnr", "ssim")}
    report = {
        "cpu": cpu_info()[0], "run": args.run, "split": args.split, "slices": start, "dc": args.dc,
        **{p: {m: float(v.mean()) for m, v in per_slice[p].items()} for p in PRECISIONS},
        "bfloat16_minus_float32": {
            "psnr_mean_db": float(delta["psnr"].mean()), "psnr_worst_slice_db": float(delta["psnr"].min()),
            "ssim_mean": float(delta["ssim"].mean())},
        "max_abs_difference": max_abs, "max_abs_difference_over_data_range": max_rel,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
