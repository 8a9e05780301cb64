"""Speed of the DAGAN networks on this machine, against its own 3×3-convolution ceiling.

Reports parameters and forward GFLOP per image for G, D and the VGG feature
extractor; training images/s (float32 and mixed bf16); inference ms/image at
batch 1 and 16, computing in float32 and in bfloat16 (``export --precision``); the export size against the
parameter bytes; and the GFLOP/s of a large 3×3 convolution in each precision (``conv_ceilings``) measured in
the same run, so every figure is also a fraction of its precision's ceiling.

``--networks srgan`` measures the hybrid-loss SRGAN: the ResNet-16 generator at 96² (its training
patches) and at ``--size``, the SRGAN discriminator and the VGG of its content loss (VGG16
``block5_conv3`` with the local weights, the stand-in for VGG19 here), training images/s on
96² patches (batch 16) and whole-slice inference.  ``--networks seitzer`` measures the two-stage refinement instead: RecNet (stage 1;
its FFT data-consistency layers are timed but not counted as FLOPs), the refinement
U-Net, the PatchGAN and the VGG of the perceptual term (VGG16 ``block5_conv3`` with
the local weights: no VGG19 weights exist offline here), training images/s of both
trainers and inference ms/image of RecNet and of the refined network.  ``--networks dcinet`` measures
DCI-Net 20I-5G-40K and its critic on ``--coils``-coil k-space (FFT data-consistency units timed, not counted):
cWGAN-AGB training images/s at ``--batch``, the process's peak RSS after each precision, and inference.
For SRGAN, RecNet and DCI-Net the report also holds ``own_width_ceilings``: the GFLOP/s of their own main
convolution (3×3 64->64 on 96² patches, 3×3 32->32, 5×5 40->40), forward and with both gradients, beside the
3×3 128->128 ceiling, since narrower convolutions cannot reach the latter.

``--strategy one-device|mirrored|multi-worker --data PREPARED`` times training steps of ``--recipe`` (default
``ppgr``; ``--width``, ``--batch``) through ``dagan_tf.training.run.train`` on the real pipeline, under that
``tf.distribute`` strategy and, in the same invocation first, on one device: the median step time of a second
epoch of ``--steps`` steps, images/s and their ratio.  ``--logical-cpus 2`` splits the CPU into two logical devices
(``mirrored`` without GPUs); ``multi-worker`` starts two workers on loopback (``TF_CONFIG``).

Usage: python scripts/bench_speed.py [--networks dagan|seitzer|srgan|dcinet] [--size 256] [--width 1.0] [--batch 8]
       [--steps 4] [--vgg-weights FILE]
       python scripts/bench_speed.py --strategy mirrored --logical-cpus 2 --data PREPARED [--recipe ppgr]
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

from dagan_tf.data.batches import ImagePair, KSpaceBatch
from dagan_tf.models.layers import inference_copy

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
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up (tracing) call."""
    return interleaved_medians({"fn": fn}, {"fn": 1}, repeats)["fn"]


def conv_ceiling(dtype: str, kernel: int = 3, channels: int = 128, side: int = 128, train: bool = False) -> float:
    """GFLOP/s of a ``kernel``², ``channels``->``channels`` convolution on 8×``side``² inputs (default: the
    3×3, 128->128 ceiling every fraction in the report refers to); ``train``: of its forward pass and both
    gradients (3× the forward FLOPs), as a training step runs it."""
    x = tf.cast(tf.random.uniform((8, side, side, channels)), dtype)
    k = tf.Variable(tf.cast(tf.random.uniform((kernel, kernel, channels, channels)), dtype))

    @tf.function
    def step():
        if not train:
            return [tf.nn.conv2d(x, k, 1, "SAME")]
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(tf.nn.conv2d(x, k, 1, "SAME"), tf.float32))
        return [loss, *tape.gradient(loss, [x, k])]  # the loss keeps the forward convolution in the graph

    seconds = timed(lambda: [t.numpy() for t in step()], 5)
    return (3 if train else 1) * 2.0 * 8 * side * side * kernel ** 2 * channels ** 2 / seconds / 1e9


def own_width_ceilings(report: dict, kernel: int, channels: int, size: int) -> None:
    """``report["own_width_ceilings"]``: float32 GFLOP/s of the network's own main convolution (``kernel``²,
    ``channels``->``channels`` on ``size``² maps), of the next multiple of 16 channels (oneDNN blocks channels by
    the vector width) and of the 3×3, 128->128 ceiling, forward (``forward``) and with both gradients
    (``train``), measured alternately, medians of 3."""
    padded = -(-channels // 16) * 16
    shapes = {f"{kernel}x{kernel}_{channels}": (kernel, channels, size), f"{kernel}x{kernel}_{padded}": (kernel, padded, size),
              "3x3_128": (3, 128, 128)}
    rates = {(name, mode): [] for name in shapes for mode in ("forward", "train")}
    for _ in range(3):
        for (name, mode), values in rates.items():
            k, c, side = shapes[name]
            values.append(conv_ceiling("float32", k, c, side, train=mode == "train"))
    report["own_width_ceilings"] = {mode: {name: float(np.median(rates[name, mode])) for name in shapes}
                                    for mode in ("forward", "train")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--vgg-weights", default=str(SHARED_VGG) if SHARED_VGG.exists() else "random")
    parser.add_argument("--inference-only", action="store_true", help="Skip the training measurements.")
    parser.add_argument("--networks", choices=("dagan", "seitzer", "srgan", "dcinet"), default="dagan")
    parser.add_argument("--coils", type=int, default=8, help="Coils of the DCI-Net measurements.")
    parser.add_argument("--strategy", choices=("one-device", "mirrored", "multi-worker"), default=None,
                        help="Time training under this tf.distribute strategy against one device (module doc).")
    parser.add_argument("--recipe", default="ppgr", help="Recipe of the --strategy measurement.")
    parser.add_argument("--data", default=None, help="Prepared data folder of the --strategy measurement.")
    parser.add_argument("--logical-cpus", type=int, default=1, help="Split the CPU into this many logical devices.")
    args = parser.parse_args()
    if args.strategy:
        return strategy_main(args)
    report = machine_report()
    report.update({"size": args.size, "width": args.width, "batch": args.batch})
    {"dagan": dagan_report, "seitzer": seitzer_report, "srgan": srgan_report,
     "dcinet": dcinet_report}[args.networks](args, report)
    print(json.dumps(report, indent=2))


def strategy_main(args) -> None:
    """``--strategy``: one device, then the strategy (two loopback workers for ``multi-worker``); one report."""
    if args.data is None:
        raise SystemExit("--strategy needs --data PREPARED (a folder made by 'dagan-tf prepare')")
    if os.environ.get("TF_CONFIG"):  # one of the two workers started below
        print(json.dumps(training_speed(args, "multi-worker")))
        return
    if args.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    report = machine_report()
    report.update(recipe=args.recipe, width=args.width, batch=args.batch, steps=args.steps,
                  logical_cpus=args.logical_cpus, conv3x3_ceiling_gflop_per_s=conv_ceiling("float32"))
    report["one-device"] = training_speed(args, "one-device")
    if args.strategy == "multi-worker":
        report["multi-worker"] = loopback_workers(args)
    elif args.strategy != "one-device":
        report[args.strategy] = training_speed(args, args.strategy)
    if args.strategy != "one-device":
        report["step_time_ratio"] = report[args.strategy]["median_step_s"] / report["one-device"]["median_step_s"]
    print(json.dumps(report, indent=2))


def training_speed(args, strategy: str) -> dict:
    """Median step time of the second of two epochs of ``--steps`` steps of ``dagan_tf.training.run.train``."""
    from dagan_tf import recipes
    from dagan_tf.training.run import train

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch, self.times = 0, []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1:
                self.times.append(time.perf_counter() - self.start)

    config = recipes.load_recipe(args.recipe)
    overrides = [f"train.batch_size={args.batch}", f"train.steps_per_epoch={args.steps}", "train.epochs=2",
                 "train.patience=0", "train.precision=float32"]
    if "width" in config["model"]:
        overrides.append(f"model.width={args.width}")
    if "vgg" in config:
        overrides.append(f"vgg.weights={args.vgg_weights}")
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as folder:
        train(Path(folder) / "run", recipes.apply_overrides(config, overrides), args.data, strategy=strategy,
              callbacks=[timer])
    step = float(np.median(timer.times))
    return {"median_step_s": step, "images_per_s": args.batch / step}


def loopback_workers(args) -> dict:
    """Run this script as two workers on loopback ports; worker 0's measurement."""
    import socket
    import subprocess
    import sys

    sockets = [socket.socket() for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]}
    for sock in sockets:
        sock.close()
    workers = [subprocess.Popen([sys.executable, *sys.argv], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "TF_CONFIG": json.dumps(
                                    {"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    outputs = [w.communicate()[0] for w in workers]
    return json.loads(outputs[0].strip().splitlines()[-1])


def machine_report() -> dict:
    """CPU model, cores, SIMD flags, the precision ``auto`` picks here and the inference copies' kernel layout."""
    from dagan_tf.hardware import NATIVE_BF16_CPU_FLAGS, cpu_info, inference_matmul_layout, resolve_precision

    cpu_model, cpu_flags = cpu_info()
    return {"cpu": {"model": cpu_model, "cores": os.cpu_count(),
                    "simd_flags": sorted(f for f in cpu_flags if f.startswith(("avx", "amx", "fma"))),
                    "native_bf16": sorted(set(NATIVE_BF16_CPU_FLAGS) & cpu_flags)},
            "precision_auto": resolve_precision("auto"),
            "inference_matmul_layout": {p: inference_matmul_layout(precision=p) for p in ("float32", "bfloat16")}}


def interleaved_medians(runs: dict, calls_per_round: dict, rounds: int) -> dict:
    """Median seconds per call of each ``runs[key]()``, timed in ``rounds`` rounds that each make
    ``calls_per_round[key]`` calls of every run in turn (after one warm-up call each), so that a slow spell of a
    shared machine falls on all of them and their ratio holds within one run."""
    for run in runs.values():
        run()
    seconds = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            for _ in range(calls_per_round[key]):
                start = time.perf_counter()
                run()
                seconds[key].append(time.perf_counter() - start)
    return {key: float(np.median(values)) for key, values in seconds.items()}


def inference_report(name: str, network, inputs_of, flops: float, size: int, ceiling: float, report: dict) -> None:
    """``report[name_batch{1,16}]``: ms/image, GFLOP/s and fraction of ``ceiling`` of ``network(inputs_of(b))``,
    timed interleaved (:func:`interleaved_medians`), and ``report[name_batch1_over_batch16]``, the ratio of their
    ms per image (pass the network's :func:`dagan_tf.inference.inference_copy` to time what eval, predict and
    export run)."""
    infer = tf.function(lambda t: network(t, training=False))
    runs = {batch: (lambda x=inputs_of(batch, size): tf.nest.map_structure(lambda t: t.numpy(), infer(x)))
            for batch in (1, 16)}
    for batch, seconds in interleaved_medians(runs, {1: 3, 16: 1}, rounds=5).items():
        report[f"{name}_batch{batch}"] = {"ms_per_image": 1000 * seconds / batch,
                                          "gflop_per_s": batch * flops / seconds / 1e9,
                                          "fraction_of_ceiling": batch * flops / seconds / 1e9 / ceiling}
    report[f"{name}_batch1_over_batch16"] = (report[f"{name}_batch1"]["ms_per_image"]
                                             / report[f"{name}_batch16"]["ms_per_image"])


def inference_reports(name: str, build, inputs_of, flops: float, size: int, report: dict) -> None:
    """:func:`inference_report` of the inference copy of ``build()`` computing in float32 (``report[name_…]``) and
    in bfloat16 (``report[name_bf16_…]``, as ``export --precision bfloat16`` builds it), each against the 3×3
    convolution ceiling of its own precision (``report["conv_ceilings"]``, measured once per run), and
    ``report[name_bf16_speedup]``: float32 ms per image over bfloat16's at batch 1 and 16."""
    from dagan_tf.hardware import keras_policy, precision_policy

    ceilings = report.setdefault("conv_ceilings", {})
    for precision, suffix in (("float32", ""), ("bfloat16", "_bf16")):
        if precision not in ceilings:
            ceilings[precision] = conv_ceiling(precision)
        with precision_policy(keras_policy(precision)):
            network = inference_copy(build())
        inference_report(name + suffix, network, inputs_of, flops, size, ceilings[precision], report)
    report[f"{name}_bf16_speedup"] = {
        f"batch{b}": report[f"{name}_batch{b}"]["ms_per_image"] / report[f"{name}_bf16_batch{b}"]["ms_per_image"]
        for b in (1, 16)}


def train_report(report: dict, key: str, step, images: int, step_flops: float, ceiling: float, steps: int) -> None:
    """``report[key]``: images/s of ``step()`` (one training step on ``images`` images), its GFLOP/s and
    fraction of the 3×3-convolution ``ceiling`` measured in the same run."""
    seconds = timed(step, steps)
    rate = images / seconds
    report[key] = {"images_per_s": rate, "gflop_per_s": rate * step_flops / 1e9, "conv3x3_ceiling_gflop_per_s": ceiling,
                   "fraction_of_ceiling": rate * step_flops / 1e9 / ceiling}


def dcinet_report(args, report: dict) -> None:
    """DCI-Net and the cWGAN-AGB trainer on ``--coils``-coil k-space (module doc)."""
    import resource

    from dagan_tf import recipes
    from dagan_tf.models.dcinet import build_dcinet, build_wgan_critic, network_inputs
    from dagan_tf.training.run import build_trainer

    size, coils = args.size, args.coils
    g, d = build_dcinet(size), build_wgan_critic(size)
    flops = {"DCI-Net": forward_flops(g), "critic": forward_flops(d)}
    report["coils"] = coils
    report["gflop_per_image"] = {k: v / 1e9 for k, v in flops.items()}
    report["params_M"] = {"DCI-Net": g.count_params() / 1e6, "critic": d.count_params() / 1e6}
    # critic step: G fwd + D fwd/bwd on real and fake (2·3·D); G step: G fwd/bwd (3·G) + D fwd and input gradient
    step_flops = 4 * flops["DCI-Net"] + 8 * flops["critic"]
    report["train_gflop_per_image"] = step_flops / 1e9
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.float32)
    mask[:, rng.random(size) < 0.25] = 1

    def coil_batch(batch, size):
        k = (rng.standard_normal((batch, coils, size, size)) + 1j * rng.standard_normal((batch, coils, size, size)))
        maps = np.full((batch, coils, size, size), 1 / np.sqrt(coils), np.complex64)
        image = rng.random((batch, size, size, 1)).astype(np.float32)
        channels = tf.concat([image, tf.zeros_like(image)], -1)
        return KSpaceBatch(image, channels, image, channels, tf.constant(np.broadcast_to(mask, (batch, size, size))),
                           tf.constant(k * mask, tf.complex64), tf.constant(maps))

    config = recipes.apply_overrides(recipes.load_recipe("cwgan-agb"), [f"model.image_size={size}"])
    for precision in () if args.inference_only else ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        model = build_trainer(config)
        batch = coil_batch(args.batch, size)
        step = tf.function(model.train_step)
        train_report(report, f"train_{precision}", lambda: step(batch)["g_loss"].numpy(), args.batch, step_flops,
                     conv_ceiling("float32" if precision == "float32" else "bfloat16"), args.steps)
        report[f"peak_rss_gib_after_{precision}"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    keras.mixed_precision.set_global_policy("float32")
    own_width_ceilings(report, 5, 40, size)

    def coil_inputs(batch, size):
        measured = coil_batch(batch, size)
        return network_inputs(measured.kspace, measured.mask, measured.maps)

    inference_reports("inference", lambda: build_dcinet(size), coil_inputs, flops["DCI-Net"], size, report)


def seitzer_report(args, report: dict) -> None:
    """RecNet and the refinement GAN (module doc)."""
    import shutil

    from dagan_tf import kspace as ks
    from dagan_tf import recipes
    from dagan_tf.models.recnet import build_recnet, network_inputs
    from dagan_tf.models.refinement import RefinedNetwork, build_patch_discriminator, build_refinement_unet
    from dagan_tf.training.run import build_trainer

    size = args.size
    recnet, unet = build_recnet(size), build_refinement_unet(size, width=args.width)
    d = build_patch_discriminator(6, args.width, image_size=size)
    vgg_config = recipes.apply_overrides(recipes.load_recipe("refinement"), [
        f"model.image_size={size}", "vgg.network=vgg16", "vgg.layer=block5_conv3", f"vgg.weights={args.vgg_weights}"])
    from dagan_tf.models.vgg import VGGFeatures

    vgg = VGGFeatures.from_recipe(vgg_config["vgg"])
    flops = {"RecNet": forward_flops(recnet), "refinement U-Net": forward_flops(unet), "PatchGAN": forward_flops(d),
             "VGG": vgg_flops_per_image(vgg.model, size)}
    report["gflop_per_image"] = {k: v / 1e9 for k, v in flops.items()}
    report["params_M"] = {"RecNet": recnet.count_params() / 1e6, "refinement U-Net": unet.count_params() / 1e6,
                          "PatchGAN": d.count_params() / 1e6}
    # RecNet step: forward + backward (3×). Refinement step per image: RecNet forward, U-Net fwd/bwd (3×),
    # D on real, fake and pooled fake fwd/bwd for D (3×3) plus the input gradient for G (2×), VGG on the
    # target and the fake with the fake's gradient (3×).
    steps = {"recnet": 3 * flops["RecNet"],
             "refinement": flops["RecNet"] + 3 * flops["refinement U-Net"] + 11 * flops["PatchGAN"]
             + 3 * flops["VGG"]}
    report["train_gflop_per_image"] = {k: v / 1e9 for k, v in steps.items()}
    rng = np.random.default_rng(0)
    mask = (rng.random((size, size)) < 0.3).astype(np.float32)

    def kspace_batch(batch, size):
        image = rng.random((batch, size, size)).astype(np.float32)
        k0, zf = ks.undersample(image, mask)
        return KSpaceBatch(tf.abs(zf)[..., None], tf.stack([tf.math.real(zf), tf.math.imag(zf)], -1), image[..., None],
                           tf.stack([image, np.zeros_like(image)], -1), tf.broadcast_to(mask, k0.shape), k0)

    with tempfile.TemporaryDirectory() as tmp:
        stage1 = Path(tmp) / "recnet"
        overrides = [f"model.image_size={size}", "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=1",
                     "train.val_batch_size=1", "data.ratio=0.3"]
        for precision in () if args.inference_only else ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(precision)
            ceiling = conv_ceiling("float32" if precision == "float32" else "bfloat16")
            for name in ("recnet", "refinement"):
                config = recipes.apply_overrides(recipes.load_recipe(name), overrides + (
                    [] if name == "recnet" else [f"stage1.run={stage1}", f"model.width={args.width}",
                                                 f"discriminator.width={args.width}", "vgg.network=vgg16",
                                                 "vgg.layer=block5_conv3", f"vgg.weights={args.vgg_weights}"]))
                if name == "refinement":
                    from dagan_tf.training.refinement import prepare_config

                    config = prepare_config(config)
                model = build_trainer(config)
                batch = kspace_batch(args.batch, size)
                step = tf.function(model.train_step)
                train_report(report, f"train_{name}_{precision}", lambda: float(next(iter(step(batch).values()))),
                             args.batch, steps[name], ceiling, args.steps)
                if name == "recnet" and not stage1.exists():  # a stage-1 run folder for the refinement trainer
                    keras.mixed_precision.set_global_policy("float32")
                    stage1.mkdir()
                    (stage1 / "config.yaml").write_text(recipes.dump(config))
                    build_recnet(size).save_weights(str(stage1 / "best.weights.h5"))
                    keras.mixed_precision.set_global_policy(precision)
        shutil.rmtree(stage1, ignore_errors=True)
    keras.mixed_precision.set_global_policy("float32")
    own_width_ceilings(report, 3, 32, size)

    def inputs(batch, size):
        b = kspace_batch(batch, size)
        return network_inputs(b.kspace, b.mask)

    inference_reports("inference_recnet", lambda: build_recnet(size), inputs, flops["RecNet"], size, report)
    inference_reports("inference_refined",
                      lambda: RefinedNetwork(build_recnet(size), build_refinement_unet(size, width=args.width)), inputs,
                      flops["RecNet"] + flops["refinement U-Net"], size, report)


def srgan_report(args, report: dict) -> None:
    """The SRGAN-style generator and discriminator (module doc)."""
    from dagan_tf import recipes
    from dagan_tf.models.dagan import scaled_filters
    from dagan_tf.models.srgan import build_resnet_generator, build_srgan_discriminator
    from dagan_tf.training.run import build_trainer

    patch, size = 96, args.size
    flops = {f"G {patch}²": forward_flops(build_resnet_generator(patch, args.width)),
             f"G {size}²": forward_flops(build_resnet_generator(size, args.width))}
    d = build_srgan_discriminator(args.width, image_size=patch)
    config = recipes.apply_overrides(recipes.load_recipe("srgan-hybrid"), [
        f"model.image_size={size}", f"model.width={args.width}", "vgg.network=vgg16", "vgg.layer=block5_conv3",
        f"vgg.weights={args.vgg_weights}"])
    d_flops = forward_flops(d)
    flops[f"D {patch}²"] = d_flops
    model = build_trainer(config)
    flops[f"VGG {patch}²"] = vgg_flops_per_image(model.features.model, patch)
    report["gflop_per_image"] = {k: v / 1e9 for k, v in flops.items()}
    report["params_M"] = {"G": model.network.count_params() / 1e6, "D": d.count_params() / 1e6}
    step_flops = 4 * flops[f"G {patch}²"] + 8 * d_flops + 3 * flops[f"VGG {patch}²"]  # as the DAGAN step
    report["train_gflop_per_image"] = step_flops / 1e9
    for precision in () if args.inference_only else ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        ceiling = conv_ceiling("float32" if precision == "float32" else "bfloat16")
        model = build_trainer(config)
        x = tf.random.uniform((16, patch, patch, 1))
        step = tf.function(model.train_step)
        train_report(report, f"train_{precision}", lambda: step(ImagePair(x, x))["g_loss"].numpy(), 16, step_flops, ceiling,
                     args.steps)
    keras.mixed_precision.set_global_policy("float32")
    own_width_ceilings(report, 3, scaled_filters(64, args.width), patch)
    inference_reports("inference", lambda: build_resnet_generator(size, args.width),
                      lambda batch, size: tf.random.uniform((batch, size, size, 1)), flops[f"G {size}²"], size, report)


def dagan_report(args, report: dict) -> None:
    """The DAGAN generator, discriminator and VGG (module doc)."""

    from dagan_tf import recipes
    from dagan_tf.contract import NetworkContract
    from dagan_tf.export import export_network
    from dagan_tf.models.dagan import build_discriminator, build_generator
    from dagan_tf.models.layers import inference_network
    from dagan_tf.training.run import build_trainer

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

    # Inference first: measured after training steps in the same process, batch 1 was 10–15 % slower (the state
    # the training left behind), and eval, predict and TF Serving run in processes that do not train.
    images = lambda batch, size: tf.random.uniform((batch, size, size, 1))  # noqa: E731
    inference_reports("inference", lambda: build_generator(args.size, args.width), images, g_flops, args.size, report)
    inference_report("inference_training_layout", g, images, g_flops, args.size, report["conv_ceilings"]["float32"],
                     report)
    g_inference = inference_network(g)  # what eval, compare, predict and export run
    with tempfile.TemporaryDirectory() as tmp:
        out = export_network(g_inference, NetworkContract("image", 1), args.size, Path(tmp) / "export")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        param_bytes = sum(int(np.prod(w.shape)) * 4 for w in g_inference.weights)
        report["export"] = {"bytes": size, "parameter_bytes": param_bytes, "ratio": size / param_bytes}

    for precision in () if args.inference_only else ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        ceiling = conv_ceiling("float32" if precision == "float32" else "bfloat16")
        model = build_trainer(config)
        x = tf.random.uniform((args.batch, args.size, args.size, 1))
        step = tf.function(model.train_step)
        train_report(report, f"train_{precision}", lambda: step(ImagePair(x, x))["g_loss"].numpy(), args.batch, step_flops,
                     ceiling, args.steps)
    keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    main()
