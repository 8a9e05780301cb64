import subprocess

import h5py
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from conftest import SIZE, phantom_volume, saved_model_cli, saved_model_cli_run, write_nifti
from dagan_tf import kspace as ks
from dagan_tf.cli import main
from dagan_tf.training.trained import load_run_network


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run):
    out = tmp_path_factory.mktemp("export") / "model"
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out), "--precision", "float32"])
    assert result.exit_code == 0, result.output
    return out


def test_export_parity_and_size(exported, trained_run):
    network, _ = load_run_network(trained_run)
    loaded = tf.saved_model.load(str(exported))
    x = tf.random.uniform((3, SIZE, SIZE, 1), seed=1)
    out = loaded.signatures["serving_default"](zero_filled=x)["reconstruction"]
    np.testing.assert_allclose(out.numpy(), network(x, training=False).numpy(), atol=1e-5)

    target = tf.random.uniform((3, SIZE, SIZE), seed=2)
    mask = np.broadcast_to(np.random.default_rng(0).random((SIZE, SIZE)) < 0.3,
                           (3, SIZE, SIZE)).astype(np.float32)
    k0, zf = ks.undersample(target, mask)
    res = loaded.signatures["from_kspace"](kspace_real=tf.math.real(k0), kspace_imag=tf.math.imag(k0),
                                           mask=tf.constant(mask))
    zero_filled = tf.abs(zf)[..., None]
    np.testing.assert_allclose(res["zero_filled"].numpy(), zero_filled.numpy(), atol=1e-5)
    expected = tf.abs(ks.data_consistency_image(network(zero_filled, training=False)[..., 0], k0, mask))
    np.testing.assert_allclose(res["reconstruction"].numpy()[..., 0], expected.numpy(), atol=1e-5)

    param_bytes = sum(int(np.prod(w.shape)) * 4 for w in network.weights)
    variables = sum(p.stat().st_size for p in (exported / "variables").iterdir())
    assert variables <= 1.05 * param_bytes + 4096


def test_saved_model_cli_runs_the_export_like_the_loaded_model(exported, tmp_path):
    """A session-based loader (TF Serving's kind) restores every variable: batch 1 and 3 as tf.saved_model.load."""
    loaded = tf.saved_model.load(str(exported))
    for batch in (1, 3):
        x = tf.random.uniform((batch, SIZE, SIZE, 1), seed=batch)
        served = saved_model_cli_run(exported, "serving_default", {"zero_filled": x.numpy()}, tmp_path)
        np.testing.assert_allclose(served["reconstruction"],
                                   loaded.signatures["serving_default"](zero_filled=x)["reconstruction"].numpy(),
                                   atol=1e-6)


def test_bfloat16_export_computes_in_bf16_with_float32_interfaces_and_data_consistency(trained_run, tmp_path):
    """--precision bfloat16: convolutions in bf16 (their ops, or the GEMM path's matmuls, typed bfloat16 in the graph), float32 inputs and
    outputs (saved_model_cli serves it), the float32 network's outputs within bf16's rounding, data consistency
    in float32 (exact on a fully sampled mask), and the precision recorded in dagan_tf.json."""
    from tensorflow.core.protobuf import saved_model_pb2

    from dagan_tf.export import export_metadata

    out = tmp_path / "bf16"
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out), "--precision", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "computing in bfloat16" in result.output and export_metadata(out)["precision"] == "bfloat16"
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((out / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    conv_types = {n.attr["T"].type for f in graph.library.function for n in f.node_def  # oneDNN's or the GEMM path
                  if n.op.startswith("Conv2D") or n.op in ("MatMul", "BatchMatMulV2")}
    assert conv_types == {tf.bfloat16.as_datatype_enum}, conv_types
    signature = saved.meta_graphs[0].signature_def["serving_default"]
    assert {t.dtype for t in [*signature.inputs.values(), *signature.outputs.values()]} == {tf.float32.as_datatype_enum}

    network, _ = load_run_network(trained_run)
    loaded = tf.saved_model.load(str(out))
    x = tf.random.uniform((3, SIZE, SIZE, 1), seed=1)
    bf16 = loaded.signatures["serving_default"](zero_filled=x)["reconstruction"].numpy()
    f32 = network(x, training=False).numpy()
    assert bf16.dtype == np.float32
    # the convolutions' weights are stored in bf16 (rounded once at export, not cast at every call)
    assert tf.bfloat16 in {v.dtype for v in loaded.serving_variables}
    assert 0 < np.abs(bf16 - f32).max() < 0.03 * np.abs(f32).max()  # bf16 keeps 8 bits of mantissa
    served = saved_model_cli_run(out, "serving_default", {"zero_filled": x.numpy()}, tmp_path)
    np.testing.assert_allclose(served["reconstruction"], bf16, atol=1e-6)

    target = tf.random.uniform((2, SIZE, SIZE), seed=2)
    full = np.ones((2, SIZE, SIZE), np.float32)
    k0, zf = ks.undersample(target, full)
    res = loaded.signatures["from_kspace"](kspace_real=tf.math.real(k0), kspace_imag=tf.math.imag(k0),
                                           mask=tf.constant(full))
    # every sample re-imposed in float32: the network's bf16 rounding is gone
    np.testing.assert_allclose(res["reconstruction"].numpy()[..., 0], target.numpy(), atol=1e-5)


def test_run_folder_precision_in_eval_and_compare(trained_run, real_slices, tmp_path):
    """eval and compare of a run folder in bfloat16 record it (metrics.json, comparison.json) and score within
    0.2 dB of float32; float32 stays the default (the same numbers on every machine)."""
    import json

    scores = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"eval-{precision}"
        args = ["eval", "--run", str(trained_run), "--no-baselines", "--data", str(real_slices), "--out", str(out)]
        result = CliRunner().invoke(main, args + (["--precision", precision] if precision != "float32" else []))
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["reconstructor_settings"]["model"] == {"precision": precision}
        scores[precision] = metrics["model"]["psnr"]["mean"]
    assert scores["float32"] != scores["bfloat16"] and abs(scores["float32"] - scores["bfloat16"]) < 0.2
    out = tmp_path / "compare"
    result = CliRunner().invoke(main, ["compare", str(trained_run), "--data", str(real_slices), "--regime", "magnitude",
                                       "--precision", "bfloat16", "--no-cache", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "magnitude" / "comparison.json").read_text())["table"]
    row = next(r for r in table if r["method"] == trained_run.name)
    assert row["precision"] == "bfloat16" and abs(row["psnr_mean"] - scores["bfloat16"]) < 1e-6
    assert "(bf16)" in (out / "magnitude" / "comparison.md").read_text()


def _graph_ops(export) -> set[str]:
    """Every op type of an export's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((export / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def test_export_for_another_cpu_builds_that_cpus_kernels_with_the_same_outputs(trained_run, tmp_path):
    """--kernels avx2 (an AVX2 serving CPU, whatever this machine): single images as row blocks (a conditional on
    the batch size), transposed kernels in the training layout; avx512: no row blocks, transposed kernels of the
    small maps as 2-D matmul operands.  Both give the trained network's outputs; the class is in dagan_tf.json, and
    predict and compare note an export built for another class than this machine's."""
    from dagan_tf.compare import load_models
    from dagan_tf.export import export_metadata
    from dagan_tf.hardware import target_isa

    network, _ = load_run_network(trained_run)
    loaded = {}
    for kernels in ("avx2", "avx512"):
        out = tmp_path / kernels
        result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out), "--kernels", kernels,
                                           "--precision", "float32"])
        assert result.exit_code == 0, result.output
        assert f"{kernels} kernels" in result.output and export_metadata(out)["kernels"] == kernels
        loaded[kernels] = tf.saved_model.load(str(out))
        ops, ranks = _graph_ops(out), {len(v.shape) for v in loaded[kernels].serving_variables}
        assert (("StatelessIf" in ops or "If" in ops), 2 in ranks) == ((True, False) if kernels == "avx2"
                                                                        else (False, True)), (kernels, ranks)
    for batch in (1, 3):
        x = tf.random.uniform((batch, SIZE, SIZE, 1), seed=batch)
        for model in loaded.values():
            np.testing.assert_allclose(model.signatures["serving_default"](zero_filled=x)["reconstruction"].numpy(),
                                       network(x, training=False).numpy(), atol=1e-5)
    # predict says when an export was built for another CPU's kernels, and only then
    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(SIZE, 3))
    for kernels in ("avx2", "avx512"):
        result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / kernels), "--input", str(source),
                                           "--out", str(tmp_path / f"{kernels}.nii.gz"), "--mask", "gaussian2d",
                                           "--ratio", "0.3"])
        assert result.exit_code == 0, result.output
        note = f"was built for {kernels} kernels and this CPU runs {target_isa()} ones"
        assert (note in result.output) == (kernels != target_isa()), result.output
        told = []  # and so does compare, whose ms per slice it concerns
        load_models([str(tmp_path / kernels)], False, SIZE, "data", told.append)
        assert any(note in line for line in told) == (kernels != target_isa()), told
    bad = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(tmp_path / "bad"), "--kernels", "sse"])
    assert bad.exit_code != 0 and "--kernels" in bad.output and not (tmp_path / "bad").exists()


def test_saved_model_cli_sees_both_signatures(exported):
    cli = subprocess.run([saved_model_cli(), "show", "--dir", str(exported), "--tag_set", "serve"],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "serving_default" in cli.stdout and "from_kspace" in cli.stdout


def test_predict_keeps_shape_affine_and_orientation(tmp_path, exported, trained_run):
    data = phantom_volume(40, 12)[:, 4:34]  # 40 x 30 x 12, not square, not the model size
    affine = np.array([[-0.9, 0, 0, 10], [0, 1.1, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])  # LAS
    source = write_nifti(tmp_path / "in.nii.gz", data, affine)
    for model, name in ((exported, "export"), (trained_run, "run")):
        out = tmp_path / f"{name}.nii.gz"
        result = CliRunner().invoke(main, ["predict", "--model", str(model), "--input", str(source), "--out",
                                           str(out), "--mask", "gaussian1d", "--ratio", "0.3", "--dc"])
        assert result.exit_code == 0, result.output
        img = nib.load(str(out))
        assert img.shape == data.shape
        np.testing.assert_allclose(img.affine, affine)
        recon = img.get_fdata()
        # the reconstruction resembles the input (same orientation): high correlation
        assert np.corrcoef(recon.ravel(), data.ravel())[0, 1] > 0.8


def test_predict_defaults_to_the_models_training_mask(tmp_path, exported, trained_run):
    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(SIZE, 6))
    for model in (exported, trained_run):
        outputs = []
        for name, mask in (("own", []), ("given", ["--mask", "gaussian1d", "--ratio", "0.3"])):  # tiny_config's
            out = tmp_path / f"{model.name}-{name}.nii.gz"
            result = CliRunner().invoke(main, ["predict", "--model", str(model), "--input", str(source), "--out",
                                               str(out), *mask])
            assert result.exit_code == 0, result.output
            own_mask_line = "mask: the model's own (gaussian1d 0.3, seed 0, one mask for all slices)"
            assert (own_mask_line in result.output) == (name == "own")
            outputs.append(nib.load(str(out)).get_fdata())
        np.testing.assert_array_equal(*outputs)


def test_predict_from_undersampled_kspace_hdf5(tmp_path, exported):
    img = np.transpose(phantom_volume(SIZE, 4), (2, 0, 1)) / 1000.0
    mask = (np.random.default_rng(1).random((SIZE, SIZE)) < 0.4).astype(np.float32)
    k = ks.fft2c(img).numpy() * mask
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["kspace"], f["mask"] = k, mask
    out = tmp_path / "k.nii.gz"
    result = CliRunner().invoke(main, ["predict", "--model", str(exported), "--input", str(tmp_path / "k.h5"),
                                       "--out", str(out), "--dc"])
    assert result.exit_code == 0, result.output
    assert nib.load(str(out)).shape == (SIZE, SIZE, 4)
    bad = CliRunner().invoke(main, ["predict", "--model", str(tmp_path), "--input", str(tmp_path / "k.h5"),
                                    "--out", str(tmp_path / "x.nii.gz")])
    assert bad.exit_code != 0 and "neither an export" in bad.output and not (tmp_path / "x.nii.gz").exists()


def test_train_cli_errors(tmp_path, real_slices):
    def run(*args):
        return CliRunner().invoke(main, ["train", *map(str, args)])

    r = run("--recipe", "nope", "--data", real_slices, "--out", tmp_path / "r")
    assert r.exit_code != 0 and "valid recipes: cascade-deep, cwgan, cwgan-agb, dcinet, pg, ppg, ppgr" in r.output
    r = run("--recipe", "pg", "--data", real_slices, "--out", tmp_path / "r", "--set", "model.depth=3")
    assert r.exit_code != 0 and "unknown --set key 'model.depth'" in r.output and "model.width" in r.output
    r = run("--out", tmp_path / "missing", "--resume")
    assert r.exit_code != 0 and "no config.yaml" in r.output
