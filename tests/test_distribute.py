"""tf.distribute: every trainer's step on two replicas, multi-worker runs on loopback, float16 loss scaling."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_user_error, run, tiny_config
from test_cwgan import tiny_wasserstein
from dagan_tf.training.distribute import cluster_spec, is_chief
from dagan_tf.training.run import train

HERE = Path(__file__).parent
TINY_PPGR = ["--recipe", "ppgr", "--set", "model.image_size=32", "--set", "model.width=0.0625",
             "--set", "vgg.weights=random", "--set", "vgg.input_size=32", "--set", "train.batch_size=4",
             "--set", "train.val_batch_size=11", "--set", "train.steps_per_epoch=3", "--set", "train.precision=float32"]


def test_every_trainer_step_on_two_replicas_equals_the_one_device_step(tmp_path, prepared_dir, multicoil_dir):
    """MirroredStrategy on two logical CPUs, synchronised batch norm: the same update as one device on the
    global batch (gradient scaling per replica, AGB's batch statistics, the refinement's first loss values);
    a global batch the replicas cannot share evenly is refused."""
    result = subprocess.run([sys.executable, str(HERE / "replica_step.py"), str(prepared_dir), str(multicoil_dir),
                             str(tmp_path)], capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(steps) == {"conditional_gan", "supervised", "refinement", "segmentation", "wasserstein", "odd_batch"}
    assert "train.batch_size 3 is not a multiple of the 2 replicas" in steps.pop("odd_batch")
    for name, step in steps.items():
        assert step["largest_update"] > 0 and step["relative"] < 1e-3, (name, step)
    beta, gma = steps["wasserstein"]["beta"], steps["wasserstein"]["gma"]
    assert beta[0] == beta[1] and gma[1] > 0 and abs(gma[0] - gma[1]) < 1e-3 * gma[1]


def test_tf_config_names_the_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_spec() == ({}, {}) and is_chief()
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": index}}))
        assert is_chief() is chief
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {**workers, "chief": ["127.0.0.1:3"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert not is_chief()


def test_bad_strategy_settings_are_one_line_errors(tmp_path, prepared_dir, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert_user_error(run("train", *TINY_PPGR, "--data", prepared_dir, "--out", out, "--strategy", "multi-worker"),
                      "TF_CONFIG", output=out)
    for bad in ("{not json", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}})):
        monkeypatch.setenv("TF_CONFIG", bad)
        assert_user_error(run("train", *TINY_PPGR, "--data", prepared_dir, "--out", out, "--strategy", "multi-worker"),
                          "TF_CONFIG is not a valid cluster description", output=out)
    monkeypatch.delenv("TF_CONFIG")
    result = run("train", *TINY_PPGR, "--data", prepared_dir, "--out", out, "--set", "train.jit_compile=on")
    assert_user_error(result, "train.jit_compile", output=out)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(tmp_path: Path, args: list, tag: str) -> list[subprocess.Popen]:
    """Two workers on loopback running ``dagan-tf ARGS`` (tests/worker_train.py); scratch folders in
    ``tmp_path/tmp``, final weights in ``tmp_path/{tag}-{index}.npz``, output in ``.log`` files."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp_path / "tmp"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "DAGAN_TEST_FINAL_WEIGHTS": str(tmp_path / f"{tag}-{index}.npz")}
        log = open(tmp_path / f"{tag}-{index}.log", "w")
        workers.append(subprocess.Popen([sys.executable, str(HERE / "worker_train.py"), *map(str, args)], env=env,
                                        stdout=log, stderr=subprocess.STDOUT))
    return workers


def _finish(workers: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """Exit codes of ``workers``; a hang (beyond ``timeout`` s) kills them and fails the test."""
    try:
        return [w.wait(timeout=timeout) for w in workers]
    except subprocess.TimeoutExpired:
        for w in workers:
            w.kill()
        pytest.fail(f"multi-worker training did not finish in {timeout} s")


def _output(tmp_path: Path, tag: str, index: int) -> str:
    return (tmp_path / f"{tag}-{index}.log").read_text()


def test_two_workers_on_loopback_train_resume_and_agree(tmp_path, prepared_dir):
    """A 2-epoch run on two workers (the last validation batch, of 1 slice, leaves one replica none), then
    --resume to 3 epochs: both finish, only the chief's folder holds the run, the other's scratch folder is
    gone, the weights are identical."""
    out = tmp_path / "run"
    common = ["train", "--out", out, "--strategy", "multi-worker"]
    assert _finish(_start_workers(tmp_path, [*common, *TINY_PPGR, "--data", prepared_dir, "--epochs", 2],
                                  "new")) == [0, 0], _output(tmp_path, "new", 0)[-3000:]
    assert "worker done; the chief saved the run" in _output(tmp_path, "new", 1)
    assert sorted(p.name for p in (out / "checkpoints").glob("*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    assert _finish(_start_workers(tmp_path, [*common, "--resume", "--epochs", 3], "resumed")) == [0, 0]
    assert "resuming at epoch 2, step 6" in _output(tmp_path, "resumed", 1)
    assert (out / "checkpoints" / "ckpt-3.index").is_file()
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 3
    assert not list((tmp_path / "tmp").glob("dagan-tf-worker-*"))
    chief, other = (np.load(tmp_path / f"resumed-{i}.npz") for i in range(2))
    assert len(chief.files) > 10
    for name in chief.files:
        np.testing.assert_array_equal(chief[name], other[name])


def test_a_killed_worker_ends_the_other_with_a_clear_error(tmp_path, prepared_dir):
    out = tmp_path / "run"
    chief, other = _start_workers(tmp_path, ["train", "--out", out, "--strategy", "multi-worker", *TINY_PPGR,
                                             "--data", prepared_dir, "--epochs", 500], "kill")
    deadline = time.monotonic() + 600  # a hang guard, not a speed requirement
    while not (out / "checkpoints" / "ckpt-1.index").is_file():
        if time.monotonic() > deadline or chief.poll() is not None:
            other.kill(), chief.kill()
            pytest.fail("the two workers did not finish an epoch: " + _output(tmp_path, "kill", 0)[-2000:])
        time.sleep(1)
    other.kill()  # SIGKILL
    assert _finish([chief], timeout=600) == [1]
    last = _output(tmp_path, "kill", 0).strip().splitlines()[-1]
    assert last.startswith("Error: the multi-worker cluster lost a worker") and "--resume" in last, last
    assert "Traceback" not in _output(tmp_path, "kill", 0)
    assert any((out / "checkpoints").glob("ckpt-*.index"))


@pytest.fixture
def nondeterministic():
    """Op determinism off for the test (earlier tests' runs turned it on for the process; Keras runs no XLA
    with it), restored after."""
    from tensorflow.python.framework import config

    was = config.is_op_determinism_enabled()
    config.disable_op_determinism()
    yield
    if was:
        config.enable_op_determinism()


def test_mixed_float16_scales_the_loss_and_xla_compiles_the_step(tmp_path, prepared_dir, nondeterministic):
    """Dynamic loss scaling: each overflowing step is skipped and halves the scale (from 2¹⁵); the others apply."""
    out = tmp_path / "run"
    lines = []
    history = train(out, tiny_config("ppgr", "train.precision=mixed_float16", "train.jit_compile=xla",
                                     "train.epochs=1", "train.steps_per_epoch=6", "train.deterministic=false"),
                    prepared_dir, echo=lines.append)
    assert any("precision mixed_float16" in line for line in lines) and any(", XLA" in line for line in lines)
    assert np.isfinite(history["val_nmse"][0]) and history["val_nmse"][0] < 0.2
    checkpoint = str(out / "checkpoints" / "ckpt-1")
    for optimizer in ("g_optimizer", "d_optimizer"):
        scale = tf.train.load_variable(checkpoint, f"{optimizer}/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE")
        applied = tf.train.load_variable(checkpoint, f"{optimizer}/inner_optimizer/_iterations/.ATTRIBUTES/"
                                                     "VARIABLE_VALUE")
        skipped = np.log2(2.0 ** 15 / scale)
        assert skipped == int(skipped) and applied >= 1 and applied + skipped == 6, (optimizer, scale, applied)


@pytest.mark.parametrize("recipe, extra", [
    ("ppgr", ("data.augment=true", "data.regime=phase", "data.per_sample_masks=true")),
    ("ppgr", ("data.augment=true", "data.augment_style=flip_rotate", "model.channels=2", "data.regime=phase")),
    ("cwgan-agb", ("data.augment=true", "data.augment_style=flip_rotate")),
])
def test_the_device_stage_gives_the_host_batches(prepared_dir, multicoil_dir, recipe, extra):
    """data.augment_on device: raw batches from tf.data, finished (augmented, undersampled, coil-combined) in
    the step; on one device every batch equals the host pipeline's (to float32 rounding: the FFTs run in
    another graph)."""
    from dagan_tf.data.batches import RawBatch
    from dagan_tf.data.pipeline import batch_stage, training_dataset
    from dagan_tf.data.prepare import load_split
    from dagan_tf.training.run import augment_of, mask_spec

    config = tiny_config("ppgr", *extra) if recipe == "ppgr" else tiny_wasserstein(recipe, *extra)
    coils = recipe != "ppgr"
    split, d = load_split(multicoil_dir if coils else prepared_dir, "train"), config["data"]
    complex_images = config["model"].get("channels", 1) == 2
    args = (split, 4, mask_spec(config), 3, 5, augment_of(config), coils, d["regime"], complex_images)
    host, _ = training_dataset(*args)
    raw, _ = training_dataset(*args, on_device=True)
    finish = tf.function(batch_stage(augment_of(config), coils, complex_images, None))
    for a, b in zip(host.take(3), raw.take(3)):
        assert isinstance(b, RawBatch) and (b.coil_kspace is not None) == coils
        finished = finish(b)
        assert type(a) is type(finished)
        for x, y in zip(a, finished):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=2e-6)


def test_training_with_the_device_stage_equals_the_host_pipeline(tmp_path, prepared_dir):
    from dagan_tf.training.trained import load_run_network

    weights = {}
    for placement in ("host", "device"):
        out = tmp_path / placement
        lines = []
        train(out, tiny_config("ppgr", "data.augment=true", f"data.augment_on={placement}", "train.epochs=1"),
              prepared_dir, echo=lines.append)
        assert any(f"augmentation and simulation on the {placement}" in line for line in lines), lines
        weights[placement] = [w.numpy() for w in load_run_network(out)[0].weights]
    for a, b in zip(weights["host"], weights["device"]):  # Adam steps of ±lr: sign flips of ~0 gradients only
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-3)
