"""Train a recipe on ../shared/data for a wall-clock budget and score it on held-out subjects.

Prepares IXI, BraTS (T1c + FLAIR grouped per patient) and niivue volumes with a
subject split, trains the recipe for ``--minutes``, then evaluates zero-filled,
the model, and the model with data consistency on the whole test split.

Usage:
  python scripts/bench_quality.py --recipe ppgr --mask gaussian2d --ratio 0.3 --minutes 30 --out bench/g2d30
Writes OUT/quality.json and the eval folders; prints a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="ppgr")
    parser.add_argument("--mask", default="gaussian2d")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25, help="generator/discriminator width multiplier")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--vgg-weights", default=str(SHARED / "weights" / "vgg16_imagenet_notop.weights.h5"))
    parser.add_argument("--vgg-input", type=int, default=244)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--data", default=None, help="an existing prepared folder (default: prepare shared data)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from dagan_tf import recipes
    from dagan_tf.data.prepare import PrepareConfig, prepare
    from dagan_tf.evaluate import evaluate, format_table
    from dagan_tf.inference import load_run_reconstructor
    from dagan_tf.training.run import mask_spec, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    if not data.exists():
        mri = SHARED / "data" / "mri"
        prepare([str(mri / "ixi-t1"), str(mri / "brats2013"), str(mri / "niivue")], data,
                PrepareConfig(size=args.size, exclude=("*brainmask*",),
                              subject_regex=r"(IXI\d+|pat\d+|chris_t1|FLAIR)"))
    config = recipes.apply_overrides(recipes.load_recipe(args.recipe), [
        f"model.image_size={args.size}", f"model.width={args.width}", f"data.mask={args.mask}",
        f"data.ratio={args.ratio}", f"train.batch_size={args.batch}", f"train.precision={args.precision}",
        f"vgg.weights={args.vgg_weights}", f"vgg.input_size={args.vgg_input}",
        f"train.steps_per_epoch={args.steps_per_epoch}", f"train.max_minutes={args.minutes}",
        "train.epochs=100000", "train.val_batch_size=16"])
    run = out / "run"
    start = time.monotonic()
    history = train(run, config, data, overwrite=True, verbose=2)
    minutes = (time.monotonic() - start) / 60
    spec = mask_spec(config)
    results = {}
    for dc in (False, True):
        name = "eval-dc" if dc else "eval"
        results[name] = evaluate(data, spec, out / name, reconstructors={"model": load_run_reconstructor(run, dc)},
                                 overwrite=True)
        print(("with data consistency\n" if dc else "") + format_table(results[name]))
    summary = {
        "recipe": args.recipe, "mask": args.mask, "ratio": args.ratio, "size": args.size, "width": args.width,
        "precision": args.precision, "vgg_input": args.vgg_input, "train_minutes": round(minutes, 1),
        "epochs": len(history.get("g_loss", [])), "steps_per_epoch": args.steps_per_epoch, "batch": args.batch,
        "zero_filled": results["eval"]["zero_filled"], "model": results["eval"]["model"],
        "model_dc": results["eval-dc"]["model"], "n_slices": results["eval"]["n_slices"],
        "n_subjects": results["eval"]["n_subjects"],
        "psnr_gain_db": results["eval"]["model"]["psnr"]["mean"] - results["eval"]["zero_filled"]["psnr"]["mean"],
        "psnr_gain_dc_db": results["eval-dc"]["model"]["psnr"]["mean"]
        - results["eval"]["zero_filled"]["psnr"]["mean"],
    }
    (out / "quality.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("train_minutes", "epochs", "psnr_gain_db", "psnr_gain_dc_db")}))


if __name__ == "__main__":
    main()
