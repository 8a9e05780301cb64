"""The fast layers and optimizer equal the Keras ones they replace."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from dagan_tf import recipes
from dagan_tf.models import layers as fast
from dagan_tf.training.optimizers import FusedAdam


def _values_and_gradients(layer, x, training=None):
    """Layer output and the gradients of a fixed random projection w.r.t. the input and the trainable weights."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x) if training is None else layer(x, training=training)
        projection = tf.reduce_sum(tf.cast(y, tf.float32) * tf.random.stateless_normal(y.shape, [1, 2]))
    return [y] + tape.gradient(projection, [x] + layer.trainable_weights)


def _assert_same(ours, theirs, atol):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, rtol=1e-5)


def test_fused_batch_norm_equals_keras_training_and_inference():
    x = tf.random.stateless_normal((4, 6, 5, 3), [0, 1]) * 3.0 + 2.0
    kwargs = {"momentum": 0.9, "epsilon": 1e-5,
              "gamma_initializer": keras.initializers.RandomNormal(1.0, 0.02, seed=3)}
    ours, theirs = fast.FusedBatchNorm(**kwargs), keras.layers.BatchNormalization(**kwargs)
    ours.build(x.shape), theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    _assert_same(_values_and_gradients(ours, x, True), _values_and_gradients(theirs, x, True), 1e-5)
    # moving statistics moved once, with the biased batch variance
    mean, variance = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
    np.testing.assert_allclose(ours.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-5)
    _assert_same(ours.get_weights(), theirs.get_weights(), 1e-6)
    _assert_same(_values_and_gradients(ours, x, False), _values_and_gradients(theirs, x, False), 1e-5)


def test_fused_batch_norm_mixed_bfloat16_keeps_float32_statistics():
    layer = fast.FusedBatchNorm(dtype="mixed_bfloat16")
    x = tf.cast(tf.random.stateless_normal((2, 4, 4, 3), [0, 2]) + 5.0, tf.bfloat16)
    y = layer(x, training=True)
    assert y.dtype == tf.bfloat16 and layer.moving_mean.dtype == "float32"
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.01 * tf.cast(x, tf.float32).numpy().mean((0, 1, 2)),
                               rtol=1e-4)


def test_fused_batch_norm_rejects_other_layouts():
    with pytest.raises(ValueError, match="N, H, W, C"):
        fast.FusedBatchNorm()(tf.zeros((2, 3)))


@pytest.mark.parametrize("side,kernel,stride", [(8, 4, 2), (7, 4, 2), (6, 3, 2), (5, 3, 1)])
def test_gemm_conv_equals_keras_conv(monkeypatch, side, kernel, stride):
    x = tf.random.stateless_normal((2, side, side + 1, 3), [1, side])
    ours = fast.GemmConv2D(5, kernel, strides=stride, padding="same")
    theirs = keras.layers.Conv2D(5, kernel, strides=stride, padding="same")
    ours.build(x.shape), theirs.build(x.shape)
    ours.set_weights([w + 0.1 for w in theirs.get_weights()])
    theirs.set_weights(ours.get_weights())
    _assert_same(_values_and_gradients(ours, x), _values_and_gradients(theirs, x), 1e-5)


@pytest.mark.parametrize("side,kernel,stride", [(4, 4, 2), (3, 4, 2), (3, 6, 3), (4, 2, 2), (2, 4, 1)])
def test_gemm_conv_transpose_equals_keras(monkeypatch, side, kernel, stride):
    x = tf.random.stateless_normal((2, side, side + 1, 3), [2, side])
    ours = fast.GemmConv2DTranspose(5, kernel, strides=stride, padding="same")
    theirs = keras.layers.Conv2DTranspose(5, kernel, strides=stride, padding="same")
    ours.build(x.shape), theirs.build(x.shape)
    ours.set_weights([w + 0.1 for w in theirs.get_weights()])
    theirs.set_weights(ours.get_weights())
    _assert_same(_values_and_gradients(ours, x), _values_and_gradients(theirs, x), 1e-5)


@pytest.mark.parametrize("filters,kernel", [(1, 1), (1, 3), (1, 9), (2, 3), (2, (3, 5))])
def test_few_channel_conv_by_taps_equals_keras_conv(monkeypatch, filters, kernel):
    """The per-tap path (few output channels; taken here whatever this machine's rule): values and gradients of
    Keras' convolution, on static and dynamic map sizes."""
    calls = []
    by_taps = fast.conv2d_by_taps
    monkeypatch.setattr(fast, "conv2d_by_taps", lambda *args: calls.append(1) or by_taps(*args))
    monkeypatch.setattr(fast, "use_tap_gemm", lambda filters, kernel_size, strides: True)
    x = tf.random.stateless_normal((2, 11, 13, 4), [3, filters])
    ours, theirs = fast.GemmConv2D(filters, kernel, padding="same"), keras.layers.Conv2D(filters, kernel, padding="same")
    ours.build(x.shape), theirs.build(x.shape)
    ours.set_weights([w + 0.1 for w in theirs.get_weights()])
    theirs.set_weights(ours.get_weights())
    _assert_same(_values_and_gradients(ours, x), _values_and_gradients(theirs, x), 1e-5)
    dynamic = tf.function(ours, input_signature=[tf.TensorSpec([None, None, None, 4])])
    np.testing.assert_allclose(dynamic(x).numpy(), theirs(x).numpy(), atol=1e-5)
    assert len(calls) == 2


@pytest.mark.parametrize("side,kernel,stride,padding", [(8, 3, 1, "same"), (12, 4, 2, "same"), (11, 4, 1, "valid"),
                                                        (13, 3, 2, "valid"), (10, 9, 1, "same"), (8, 5, 2, "same")])
def test_row_block_conv_equals_keras_conv(side, kernel, stride, padding):
    """Two row blocks of one image (the batch-of-one form, also with blocks reaching past both edges): Keras'
    convolution, with bias and activation; the layer at batch 3 takes Keras' path; also traced for any batch, as
    an exported serving signature runs it."""
    theirs = keras.layers.Conv2D(5, kernel, strides=stride, padding=padding, activation="relu")
    ours = fast.RowBlockConv2D.from_config(theirs.get_config())
    ours.build((None, side, side + 2, 3)), theirs.build((None, side, side + 2, 3))
    theirs.set_weights([w + 0.1 for w in ours.get_weights()])
    ours.set_weights(theirs.get_weights())
    any_batch = tf.function(ours, input_signature=[tf.TensorSpec([None, side, side + 2, 3])])
    for batch in (1, 3):
        x = tf.random.stateless_normal((batch, side, side + 2, 3), [5, side])
        np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(any_batch(x).numpy(), theirs(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(fast.conv2d_row_blocks(x[:1], theirs.kernel, (stride, stride), padding).numpy(),
                               tf.nn.conv2d(x[:1], theirs.kernel, stride, padding.upper()).numpy(), atol=1e-5)


def test_gemm_path_is_taken_only_on_small_maps(monkeypatch):
    calls = []
    monkeypatch.setattr(fast, "conv2d_gemm", lambda x, *args: calls.append(x.shape) or tf.zeros((1, 1, 1, 1)))
    monkeypatch.setattr(fast, "conv2d_transpose_gemm", lambda x, *args: calls.append(x.shape) or tf.zeros((1, 1, 1, 1)))
    conv = fast.GemmConv2D(2, 4, strides=2, padding="same")
    conv(tf.zeros((1, 16, 16, 1)))   # 8×8 output: GEMM
    conv(tf.zeros((1, 18, 16, 1)))   # 9×8 output: oneDNN convolution
    transposed = fast.GemmConv2DTranspose(2, 4, strides=2, padding="same")
    transposed(tf.zeros((1, 8, 8, 1)))   # 8×8 input: GEMM
    transposed(tf.zeros((1, 8, 9, 1)))   # oneDNN
    assert calls == [(1, 16, 16, 1), (1, 8, 8, 1)]


def test_gemm_layers_on_maps_of_unknown_size_use_keras_path():
    x = tf.random.stateless_normal((2, 4, 4, 3), [4, 5])
    for ours, theirs in ((fast.GemmConv2D(5, 4, strides=2, padding="same"), keras.layers.Conv2D(5, 4, strides=2, padding="same")),
                         (fast.GemmConv2DTranspose(5, 4, strides=2, padding="same"),
                          keras.layers.Conv2DTranspose(5, 4, strides=2, padding="same"))):
        ours.build(x.shape), theirs.build(x.shape)
        theirs.set_weights(ours.get_weights())
        dynamic = tf.function(ours, input_signature=[tf.TensorSpec([None, None, None, 3])])
        np.testing.assert_allclose(dynamic(x).numpy(), theirs(x).numpy(), atol=1e-5)


def test_gemm_layers_reject_unsupported_configurations():
    with pytest.raises(ValueError, match="'same' padding"):
        fast.GemmConv2D(4, 3, padding="valid")
    with pytest.raises(ValueError, match="multiples of the strides"):
        fast.GemmConv2DTranspose(4, 3, strides=2, padding="same")


def test_leaky_relu_equals_keras():
    x = tf.random.stateless_normal((3, 7), [3, 4])
    _assert_same(_values_and_gradients(fast.LeakyReLU(0.2), x), _values_and_gradients(keras.layers.LeakyReLU(0.2), x),
                 1e-7)
    with pytest.raises(ValueError, match="positive"):
        fast.LeakyReLU(0.0)


def test_conv_bias_leaky_relu_training_graph_keeps_graph_optimiser_working():
    """TF 2.21 logs 'remapper failed' (and drops its fusions) for Keras' LeakyReLU here; ours does not."""
    script = textwrap.dedent("""
        import keras, tensorflow as tf
        from dagan_tf.models.layers import LeakyReLU
        inputs = keras.Input((8, 8, 4))
        x = LeakyReLU(0.2)(keras.layers.Conv2D(8, 4, strides=2, padding="same")(inputs))
        model = keras.Model(inputs, keras.layers.Concatenate()([x, x]))
        @tf.function
        def step(v):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(v) ** 2)
            return tape.gradient(loss, model.trainable_variables)
        step(tf.ones((2, 8, 8, 4)))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.stdout.strip() == "ok", result.stderr
    assert "remapper failed" not in result.stderr


def _adam_reference(theta, grads, lr, beta1, beta2, epsilon):
    m = v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        theta = theta - lr * np.sqrt(1 - beta2**t) / (1 - beta1**t) * m / (np.sqrt(v) + epsilon)
    return theta


def test_fused_adam_equals_keras_adam_and_the_formula():
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    results = []
    for optimizer in (FusedAdam(1e-2, beta_1=0.5, epsilon=1e-8), keras.optimizers.Adam(1e-2, beta_1=0.5, epsilon=1e-8)):
        variable = keras.Variable(theta0)
        for g in grads:
            optimizer.apply_gradients([(tf.constant(g), variable)])
        results.append(variable.numpy())
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    np.testing.assert_allclose(results[0], _adam_reference(theta0, grads, 1e-2, 0.5, 0.999, 1e-8), atol=1e-5)
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(amsgrad=True)


def test_fused_adam_under_mirrored_strategy_equals_single_device():
    """Two replicas on two logical CPUs: the same update as one device on the whole batch."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from dagan_tf.training.optimizers import FusedAdam
        x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
        def train(strategy):
            with strategy.scope():
                model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer="ones")])
                model.compile(FusedAdam(0.1), loss="mse")
            model.fit(x, np.ones((8, 2), "float32"), batch_size=8, epochs=3, shuffle=False, verbose=0)
            return model.get_weights()[0]
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2
        print(float(np.abs(train(mirrored) - train(tf.distribute.get_strategy())).max()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def _small_recipe_config(recipe: str, size: int) -> dict:
    """``recipe``'s config at ``size``² (width 0.125 where it has one, whole slices rather than patches)."""
    config = recipes.load_recipe(recipe)
    return recipes.apply_overrides(config, [f"model.image_size={size}"]
                                   + (["model.width=0.125"] if "width" in config["model"] else [])
                                   + (["data.patch_size=null"] if config["data"].get("patch_size") else []))


def _random_measurements(n: int, size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(image, kspace, mask)``: ``n`` random complex images ``[n, size, size]``, their k-space on a random mask of
    about 40 % and the mask (float32 {0, 1})."""
    image = tf.complex(tf.random.uniform((n, size, size), seed=2), tf.random.uniform((n, size, size), seed=3))
    mask = tf.cast(tf.random.uniform((n, size, size), seed=4) < 0.4, tf.float32)
    return image, tf.signal.fft2d(image) * tf.complex(mask, 0.0), mask


@pytest.mark.parametrize("recipe", recipes.recipe_names())
def test_inference_copy_of_every_recipe_network_equals_the_trained_one(recipe, monkeypatch):
    """Batch norms folded, GEMM kernels relaid out, one-channel outputs on the per-tap path, convolutions in row
    blocks at batch 1: the same outputs within 1e-5 of their scale, for every recipe's network."""
    from dagan_tf.models.layers import inference_copy
    from dagan_tf.models.network_io import network_inputs, run_network
    from dagan_tf.models.refinement import RefinedNetwork
    from dagan_tf.training.trained import build_network

    size = 32
    config = _small_recipe_config(recipe, size)
    network, contract = build_network(config), recipes.network_contract(config)
    image, kspace, mask = _random_measurements(8, size)
    inputs = network_inputs(contract, image, kspace, mask)
    refined = contract.stage1
    norms = [layer for layer in (network.unet if refined else network).layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # moving statistics of this batch (momentum 0), not the initial ones
        layer.momentum = 0.0
    if refined:
        network.forward(inputs, training=True)
        network.gate.gate.assign(0.7)  # λ = 0 would hide the refinement U-Net
    elif norms:
        network(inputs, training=True)
    for layer in norms:
        layer.momentum = 0.9
    copy = inference_copy(network)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
                   for net in ([copy.unet] if isinstance(copy, RefinedNetwork) else [copy]) for layer in net.layers)
    def reconstruction(network, n=8):
        return run_network(network, contract, image[:n], kspace[:n], mask[:n])[0].numpy()

    expected = reconstruction(network)
    copies = [copy]
    if recipe in ("pg", "ppg", "ppgr", "ppgr-complex"):  # DAGAN U-Nets: 8×8 and smaller maps on the GEMM path
        copies = [fast.inference_network(network, matmul_layout) for matmul_layout in (True, False)]
        assert [sum(isinstance(layer, fast.MatmulConv2DTranspose) for layer in c.layers) for c in copies] == [4, 0]
    if recipe in ("pg", "ppg", "ppgr", "srgan-hybrid", "srgan-mse", "srgan-vgg", "refinement"):  # one-channel outputs
        output = "head" if refined else "out"
        assert all(type((c.unet if refined else c).get_layer(output)) is fast.GemmConv2D for c in copies)
        assert type((network.unet if refined else network).get_layer(output)) is keras.layers.Conv2D
    monkeypatch.setattr(fast, "split_batch_of_one", lambda: True)  # what AVX2 machines get
    copies.append(inference_copy(network))
    for net in ([copies[-1].recnet, copies[-1].unet] if refined else [copies[-1]]):
        assert any(isinstance(layer, fast.RowBlockConv2D) for layer in net.layers)
    for copy in copies:
        np.testing.assert_allclose(reconstruction(copy), expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    single = reconstruction(copies[-1], 1)
    np.testing.assert_allclose(single, expected[:1], atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_bf16_inference_copy_holds_bf16_weights_and_computes_as_the_mixed_network():
    """An inference copy of a ``mixed_bfloat16`` network keeps its convolution and dense weights in bf16 (rounded
    once, instead of cast at every call) and returns the mixed network's outputs exactly; a layer declared
    float32 (as data consistency is) keeps float32 weights and computation."""
    from dagan_tf.hardware import precision_policy

    with precision_policy("mixed_bfloat16"):
        x = keras.Input((16, 16, 2), name="image")
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
        h = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(h)
        h = keras.layers.Dense(3, name="dense")(h)
        y = keras.layers.Conv2D(2, 1, dtype="float32", name="head")(h)
        model = keras.Model(x, y)
    copy = fast.inference_network(model, matmul_layout=False, row_blocks=False)
    assert {name: copy.get_layer(name).kernel.dtype for name in ("conv", "up", "dense", "head")} == {
        "conv": "bfloat16", "up": "bfloat16", "dense": "bfloat16", "head": "float32"}
    assert all(model.get_layer(name).kernel.dtype == "float32" for name in ("conv", "up", "dense"))  # untouched
    inputs = tf.random.uniform((2, 16, 16, 2), seed=7)
    expected = model(inputs, training=False)
    assert expected.dtype == tf.float32
    np.testing.assert_array_equal(copy(inputs, training=False).numpy(), expected.numpy())


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_inference_copy_takes_the_matmul_layout_of_its_compute_precision(precision):
    """For the avx512 class, DAGAN's copy holds its transposed convolutions on 8×8 and smaller maps in matmul
    layout in float32 and in the training layout in bf16 (hardware.INFERENCE_MATMUL_LAYOUT), and returns the
    network's outputs either way (bf16: within a bf16 rounding of [0, 1] outputs)."""
    from dagan_tf.hardware import keras_policy, precision_policy, target_kernels
    from dagan_tf.models.dagan import build_generator

    with precision_policy(keras_policy(precision)), target_kernels("avx512"):
        network = build_generator(64, width=0.125)
        copy = fast.inference_network(network)
    matmul_layers = [layer.name for layer in copy.layers if isinstance(layer, fast.MatmulConv2DTranspose)]
    assert matmul_layers == (["deconv5", "deconv4", "deconv3", "deconv2"] if precision == "float32" else [])
    x = tf.random.uniform((2, 64, 64, 1), seed=5)
    np.testing.assert_allclose(copy(x, training=False).numpy(), network(x, training=False).numpy(),
                               atol=1e-5 if precision == "float32" else 2 ** -7)


@pytest.mark.parametrize("recipe", recipes.recipe_names())
def test_bf16_inference_copy_of_every_recipe_network_is_as_close_to_float32_as_the_mixed_network(recipe):
    """What ``export --precision bfloat16`` (``auto`` on a CPU with native bf16) builds: the inference copy of every
    recipe's network computing in bf16 (weights in bf16, batch norms folded into them, GEMM and per-tap paths)
    is about as close to the float32 network as the mixed-precision network training runs (its RMS difference at
    most 1.5× that one's plus 2⁻¹⁰ of the output scale), with float32 outputs."""
    from dagan_tf.hardware import precision_policy
    from dagan_tf.models.layers import inference_copy
    from dagan_tf.models.network_io import run_network
    from dagan_tf.training.trained import build_network

    keras.utils.set_random_seed(5)
    size = 32
    config = _small_recipe_config(recipe, size)
    network, contract = build_network(config), recipes.network_contract(config)
    with precision_policy("mixed_bfloat16"):
        mixed = build_network(config)
    mixed.set_weights(network.get_weights())
    copy = inference_copy(mixed)
    image, kspace, mask = _random_measurements(2, size)
    outputs = {name: run_network(net, contract, image, kspace, mask)[0]
               for name, net in (("float32", network), ("mixed", mixed), ("copy", copy))}
    assert outputs["copy"].dtype == tf.float32 and any(w.dtype == "bfloat16" for w in copy.weights)
    expected = outputs["float32"].numpy()
    scale = max(1.0, np.abs(expected).max())
    rms = {name: float(np.sqrt(np.mean((outputs[name].numpy() - expected) ** 2))) for name in ("mixed", "copy")}
    assert rms["copy"] <= 1.5 * rms["mixed"] + 2 ** -10 * scale
