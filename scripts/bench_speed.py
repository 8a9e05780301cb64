"""Speed of the DAGAN networks on this machine, against its own 3×3-convolution ceiling.

Reports parameters and forward GFLOP per image for G, D and the VGG feature
extractor; training images/s (float32 and mixed bf16); inference ms/image at
batch 1 and 16; the export size against the parameter bytes; and the GFLOP/s
of a large 3×3 convolution measured in the same run, so every figure is also a
fraction of that ceiling.

Usage: python scripts/bench_speed.py [--size 256] [--width 1.0] [--batch 8] [--steps 4] [--vgg-weights FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

SHARED_VGG = Path(__file__).resolve().parents[2] / "shared" / "weights" / "vgg16_imagenet_notop.weights.h5"


def forward_flops(model: keras.Model) -> float:
    """Multiply-adds ×2 of conv, transposed-conv and dense layers for one image."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, cin = layer.input.shape
            total += 2.0 * h * w * np.prod(layer.kernel_size) * cin * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            total += 2.0 * h * w * np.prod(layer.kernel_size) * layer.input.shape[-1] * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def vgg_flops_per_image(model: keras.Model, size: int) -> float:
    """Forward FLOPs of a (None, None, 3)-input VGG on ``size``² images ('same' convs, pools halve, ceil)."""
    total, side, channels = 0.0, size, 3
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            total += 2.0 * side * side * np.prod(layer.kernel_size) * channels * layer.filters
            channels = layer.filters
        elif isinstance(layer, keras.layers.MaxPooling2D):
            side = -(-side // 2) if layer.padding == "same" else side // 2
    return total


def timed(fn, repeats: int) -> float:
    fn()  # warm-up / tracing
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def conv_ceiling(dtype: str) -> float:
    """GFLOP/s of a 3×3, 128->128 convolution on 8×128×128 inputs."""
    x = tf.cast(tf.random.uniform((8, 128, 128, 128)), dtype)
    k = tf.cast(tf.random.uniform((3, 3, 128, 128)), dtype)
    conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"))
    seconds = timed(lambda: conv().numpy(), 5)
    return 2.0 * 8 * 128 * 128 * 9 * 128 * 128 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--vgg-weights", default=str(SHARED_VGG) if SHARED_VGG.exists() else "random")
    parser.add_argument("--inference-only", action="store_true", help="Skip the training measurements.")
    args = parser.parse_args()

    from dagan_tf import recipes
    from dagan_tf.export import export_generator
    from dagan_tf.models.dagan import build_discriminator, build_generator
    from dagan_tf.models.layers import fold_batch_norm
    from dagan_tf.training.run import build_trainer

    from dagan_tf.hardware import NATIVE_BF16_CPU_FLAGS, cpu_info, resolve_precision

    cpu_model, cpu_flags = cpu_info()
    report: dict = {"size": args.size, "width": args.width, "batch": args.batch,
                    "cpu": {"model": cpu_model, "cores": os.cpu_count(),
                            "simd_flags": sorted(f for f in cpu_flags if f.startswith(("avx", "amx", "fma"))),
                            "native_bf16": sorted(set(NATIVE_BF16_CPU_FLAGS) & cpu_flags)},
                    "precision_auto": resolve_precision("auto")}
    g, d = build_generator(args.size, args.width), build_discriminator(args.size, args.width)
    config = recipes.apply_overrides(recipes.load_recipe("ppgr"), [
        f"model.image_size={args.size}", f"model.width={args.width}", f"vgg.weights={args.vgg_weights}"])
    vgg = build_trainer(config).features
    vgg_flops = vgg_flops_per_image(vgg.model, vgg.input_size)
    g_flops, d_flops = forward_flops(g), forward_flops(d)
    report["params_M"] = {"G": g.count_params() / 1e6, "D": d.count_params() / 1e6,
                          "VGG": vgg.model.count_params() / 1e6}
    report["gflop_per_image"] = {"G": g_flops / 1e9, "D": d_flops / 1e9, "VGG": vgg_flops / 1e9}
    # One train step per image: D step = G fwd + D fwd/bwd on real and fake (3×D each);
    # G step = G fwd/bwd (3×G) + D fwd and input-gradient (2×D) + VGG on target, fake and its gradient (3×VGG).
    step_flops = 4 * g_flops + 8 * d_flops + 3 * vgg_flops
    report["train_gflop_per_image"] = step_flops / 1e9

    for precision in () if args.inference_only else ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        ceiling = conv_ceiling("float32" if precision == "float32" else "bfloat16")
        model = build_trainer(config)
        x = tf.random.uniform((args.batch, args.size, args.size, 1))
        step = tf.function(model.train_step)
        seconds = timed(lambda: step((x, x))["g_loss"].numpy(), args.steps)
        rate = args.batch / seconds
        report[f"train_{precision}"] = {"images_per_s": rate, "gflop_per_s": rate * step_flops / 1e9,
                                        "conv3x3_ceiling_gflop_per_s": ceiling,
                                        "fraction_of_ceiling": rate * step_flops / 1e9 / ceiling}
    keras.mixed_precision.set_global_policy("float32")
    ceiling = conv_ceiling("float32")
    g = build_generator(args.size, args.width)  # what eval, predict and export run
    for name, net in (("inference", g), ("inference_folded", fold_batch_norm(g))):
        infer = tf.function(lambda t, net=net: net(t, training=False))
        for batch in (1, 16):
            x = tf.random.uniform((batch, args.size, args.size, 1))
            seconds = timed(lambda: infer(x).numpy(), 5 if batch == 1 else 3)
            report[f"{name}_batch{batch}"] = {
                "ms_per_image": 1000 * seconds / batch, "gflop_per_s": batch * g_flops / seconds / 1e9,
                "fraction_of_ceiling": batch * g_flops / seconds / 1e9 / ceiling}
    report["batch1_over_batch16"] = (report["inference_batch1"]["ms_per_image"]
                                     / report["inference_batch16"]["ms_per_image"])
    with tempfile.TemporaryDirectory() as tmp:
        out = export_generator(g, Path(tmp) / "export")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        param_bytes = sum(int(np.prod(w.shape)) * 4 for w in g.weights)
        report["export"] = {"bytes": size, "parameter_bytes": param_bytes, "ratio": size / param_bytes}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
