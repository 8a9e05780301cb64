"""Per-layer kernel timing: oneDNN's (transposed) convolution against the GEMM paths of ``models/layers.py``.

For every ``GemmConv2D`` / ``GemmConv2DTranspose`` of the DAGAN generator and discriminator (``--size``,
``--width``) it times both kernels on the layer's own shapes, in the same process, alternating the two so
a loaded machine slows both alike: inference (forward) at batch 1 and 16 and training (forward and both
gradients) at ``--batch``, per dtype.  It prints one row per layer with the faster kernel, the small side
(output map of a conv, input map of a transposed conv, positions per image) and the path
:func:`dagan_tf.hardware.use_gemm` picks on this machine, and writes the table as JSON.

``--taps`` times the one-channel output convolutions instead (DAGAN's 1×1 and the refinement's 1×1 at
``--size``, SRGAN's 9×9 at 96² and ``--size``): oneDNN against :func:`conv2d_by_taps`, the path
:func:`dagan_tf.hardware.use_tap_gemm` picks in inference copies (inference rows only).

oneDNN can be limited to an older instruction set to see what another CPU would run, e.g.
``ONEDNN_MAX_CPU_ISA=AVX2`` for an AVX2-only machine (the machine report records it).

Usage: python scripts/bench_kernels.py [--size 256] [--width 1] [--batch 8] [--dtype float32 bfloat16]
       [--repeats 5] [--taps] [--out kernels.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from dagan_tf.hardware import cpu_info, kernel_isa, use_gemm, use_tap_gemm  # noqa: E402
from dagan_tf.models.dagan import build_discriminator, build_generator  # noqa: E402
from dagan_tf.models.layers import GemmConv2D, conv2d_by_taps, conv2d_gemm, conv2d_transpose_gemm, small_side  # noqa: E402


def gemm_layers(size: int, width: float) -> list[dict]:
    """``{"name", "kind", "input" [H, W, Cin], "kernel", "strides"}`` of every GEMM-capable layer."""
    found = []
    for model in (build_generator(size, width), build_discriminator(size, width)):
        for layer in model.layers:
            if hasattr(layer, "kernel") and type(layer).__name__.startswith("Gemm"):
                found.append({"name": f"{model.name}/{layer.name}",
                              "kind": "conv" if isinstance(layer, GemmConv2D) else "transpose",
                              "input": tuple(layer.input.shape[1:]), "kernel": tuple(layer.kernel.shape),
                              "strides": tuple(layer.strides)})
    return found


def tap_layers(size: int, width: float) -> list[dict]:
    """The one-channel output convolutions of DAGAN, SRGAN (at 96², its training patches, and ``size``) and the
    refinement U-Net, as :func:`gemm_layers` rows of kind ``taps``."""
    from dagan_tf.models.refinement import build_refinement_unet
    from dagan_tf.models.srgan import build_resnet_generator

    found = []
    for label, model, name in (("dagan", build_generator(size, width), "out"),
                               ("srgan", build_resnet_generator(96, width), "out"),
                               ("srgan", build_resnet_generator(size, width), "out"),
                               ("refinement", build_refinement_unet(size, width=width), "head")):
        layer = model.get_layer(name)
        found.append({"name": f"{label}/{name}", "kind": "taps", "input": tuple(layer.input.shape[1:]),
                      "kernel": tuple(layer.kernel.shape), "strides": (1, 1)})
    return found


def kernels(layer: dict):
    """``(onednn, gemm)``: functions of ``(x, kernel)`` computing the layer's 'same' (transposed) convolution."""
    strides = layer["strides"]
    if layer["kind"] == "conv":
        return (lambda x, k: tf.nn.conv2d(x, k, strides, "SAME"),
                lambda x, k: conv2d_gemm(x, k, strides))
    if layer["kind"] == "taps":
        return lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), conv2d_by_taps

    def onednn(x, k):
        shape = [tf.shape(x)[0], x.shape[1] * strides[0], x.shape[2] * strides[1], k.shape[2]]
        return tf.nn.conv2d_transpose(x, k, shape, strides, "SAME")

    return onednn, lambda x, k: conv2d_transpose_gemm(x, k, strides)


def step_functions(fn, training: bool):
    if not training:
        return tf.function(lambda x, k: tf.reduce_sum(fn(x, k)))

    @tf.function
    def step(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = fn(x, k)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, k])

    return step


def time_pair(first, second, x, k, repeats: int) -> tuple[float, float]:
    """Median seconds of ``first(x, k)`` and ``second(x, k)``, run alternately after a warm-up each."""
    times = ([], [])
    for fn in (first, second):
        tf.nest.map_structure(lambda t: t.numpy(), fn(x, k))
    for _ in range(repeats):
        for fn, record in zip((first, second), times):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn(x, k))
            record.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8, help="Training batch.")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--taps", action="store_true", help="Time the one-channel output convolutions (module doc).")
    parser.add_argument("--out", default=None, help="JSON file for the table.")
    args = parser.parse_args()

    model, flags = cpu_info()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or "native"
    print(f"CPU {model}; oneDNN ISA limit: {isa}; kernel ISA class: {kernel_isa(flags, isa)}")
    rows = []
    for layer in (tap_layers if args.taps else gemm_layers)(args.size, args.width):
        h, w, cin = layer["input"]
        small = small_side(h, w, layer["strides"] if layer["kind"] != "transpose" else (1, 1))
        rule = (use_tap_gemm(layer["kernel"][-1], layer["kernel"][:2], (1, 1), flags, isa) if layer["kind"] == "taps"
                else use_gemm(small, flags, isa))
        onednn, gemm = kernels(layer)
        for dtype in args.dtype:
            modes = (("infer", 1), ("infer", 16)) + (() if args.taps else (("train", args.batch),))
            for mode, batch in modes:  # the per-tap path is an inference form (hardware.TAP_GEMM_MAX_FILTERS)
                x = tf.cast(tf.random.normal([batch, h, w, cin]), dtype)
                k = tf.cast(tf.random.normal(layer["kernel"]) * 0.05, dtype)
                t_dnn, t_gemm = time_pair(step_functions(onednn, mode == "train"),
                                          step_functions(gemm, mode == "train"), x, k, args.repeats)
                row = {**layer, "small_side_positions": small, "dtype": dtype, "mode": mode, "batch": batch,
                       "onednn_ms": 1000 * t_dnn, "gemm_ms": 1000 * t_gemm,
                       "faster": "gemm" if t_gemm < t_dnn else "onednn",
                       "rule": "gemm" if rule else "onednn"}
                rows.append(row)
                print(f"{layer['name']:26s} {layer['kind']:9s} {h:4d}² {cin:5d}->{layer['kernel'][2 if layer['kind'] == 'transpose' else -1]:5d}"
                      f" small {small:6d} {dtype:8s} {mode} b{batch:<3d} oneDNN {row['onednn_ms']:9.2f} ms"
                      f"  GEMM {row['gemm_ms']:9.2f} ms  faster {row['faster']:6s} rule {row['rule']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": model, "onednn_max_cpu_isa": isa, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
