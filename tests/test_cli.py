import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from conftest import assert_user_error, phantom_volume, run, shared_path, write_nifti


def test_version_and_help():
    assert "dagan-tf, version" in run("--version").output
    out = run("--help").output
    for command in ("masks", "prepare", "eval"):
        assert command in out


def test_masks_command_prints_fraction(tmp_path):
    result = run("masks", "--kind", "gaussian2d", "--ratio", 0.3, "--size", 64, "--seed", 2,
                 "--out", tmp_path / "m.npy", "--png", tmp_path / "m.png")
    assert result.exit_code == 0, result.output
    mask = np.load(tmp_path / "m.npy")
    assert result.output.strip() == f"sampled fraction: {mask.mean():.4f}" == "sampled fraction: 0.3000"
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_prepare_and_zero_filled_eval(tmp_path, phantom_dir):
    prepared = tmp_path / "p"
    result = run("prepare", phantom_dir, "--out", prepared, "--size", 32, "--split", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    out = tmp_path / "ev"
    result = run("eval", "--model", "zero-filled", "--data", prepared, "--mask", "gaussian1d", "--ratio", 0.3,
                 "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["zero_filled"]) == {"nmse", "psnr", "ssim", "ms_per_slice"}
    assert metrics["n_subjects"] == 1 and metrics["n_slices"] == len(np.load(prepared / "test_images.npy"))
    assert {"mean", "std"} <= set(metrics["zero_filled"]["psnr"])
    rows = (out / "per_slice.csv").read_text().strip().splitlines()
    assert len(rows) == metrics["n_slices"] + 1
    psnr = np.array([float(r.split(",")[5]) for r in rows[1:]])
    assert psnr.mean() == pytest.approx(metrics["zero_filled"]["psnr"]["mean"], rel=1e-4)
    assert (out / "examples.png").exists() and "PSNR" in result.output
    assert_user_error(run("eval", "--model", "zero-filled", "--data", prepared, "--mask", "gaussian1d",
                          "--ratio", 0.3, "--out", out), "exists", "--overwrite")


def test_zero_filled_on_shared_data_dagan_mask(tmp_path):
    ixi = shared_path("mri", "ixi-t1")
    mask = shared_path("masks", "dagan", "Gaussian2D", "GaussianDistribution2DMask_30.mat")
    prepared = tmp_path / "p"
    sources = sorted(ixi.glob("*.nii.gz"))[:3]
    assert run("prepare", *sources, "--out", prepared, "--size", 256, "--split", "0.34,0.33,0.33").exit_code == 0
    result = run("eval", "--model", "zero-filled", "--data", prepared, "--mask", mask, "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert abs(metrics["mask"]["sampled_fraction"] - 0.3001) < 1e-3
    assert 25 < metrics["zero_filled"]["psnr"]["mean"] < 40


# --- bad input: one-line error, non-zero exit, no partial output ---------------------------

def test_missing_path_and_empty_folder(tmp_path):
    out = tmp_path / "out"
    assert_user_error(run("prepare", tmp_path / "nope.nii.gz", "--out", out), "nope.nii.gz", output=out)
    (tmp_path / "empty").mkdir()
    assert_user_error(run("prepare", tmp_path / "empty", "--out", out), "empty", output=out)


def test_truncated_nifti(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", phantom_volume(16, 4))
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(good.read_bytes()[:100])
    assert_user_error(run("prepare", bad, "--out", tmp_path / "o"), "trunc.nii.gz", output=tmp_path / "o")


def test_pickled_numpy_files_are_refused(tmp_path):
    """Object arrays are pickles: never loaded, a one-line error naming the file (an .npz loads its members
    lazily, so the refusal surfaced as a traceback from the member read), alone or beside a numeric array."""
    pickled = np.array([phantom_volume(16, 4), "x"], dtype=object)
    np.savez(tmp_path / "alone.npz", image=pickled)
    np.savez(tmp_path / "beside.npz", notes=pickled, scan=phantom_volume(16, 4))
    for name in ("alone.npz", "beside.npz"):
        assert_user_error(run("prepare", tmp_path / name, "--out", tmp_path / "o"), name, "pickled",
                          output=tmp_path / "o")


def test_4d_volume_needs_volume_index(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_nifti(src / f"f{i}.nii.gz", np.stack([phantom_volume(16, 4, seed=i)] * 2, -1))
    assert_user_error(run("prepare", src, "--out", tmp_path / "o"), "4-D", "--volume-index", output=tmp_path / "o")
    ok = run("prepare", src, "--out", tmp_path / "o", "--size", 16, "--volume-index", 1)
    assert ok.exit_code == 0, ok.output


def test_nan_voxels(tmp_path):
    data = phantom_volume(16, 4)
    data[3, 3, 1] = np.nan
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    assert_user_error(run("prepare", path, "--out", tmp_path / "o"), "nan.nii.gz", "NaN", output=tmp_path / "o")
    data[3, 3, 1] = np.inf
    np.save(tmp_path / "inf.npy", data)
    assert_user_error(run("prepare", tmp_path / "inf.npy", "--out", tmp_path / "o"), "Inf")


def test_all_zero_volume(tmp_path):
    zero = write_nifti(tmp_path / "zero.nii.gz", np.zeros((16, 16, 4), np.float32))
    assert_user_error(run("prepare", zero, "--out", tmp_path / "o"), "no usable slices", output=tmp_path / "o")


def test_mask_errors(tmp_path, prepared_dir):
    out = tmp_path / "e"
    base = ("eval", "--model", "zero-filled", "--data", prepared_dir, "--out", out)
    assert_user_error(run(*base, "--mask", "gaussian1d", "--ratio", 0), "ratio", output=out)
    assert_user_error(run(*base, "--mask", "gaussian1d", "--ratio", 1.2), "ratio", output=out)
    assert_user_error(run(*base, "--mask", "spiral", "--ratio", 0.2), "spiral", output=out)
    scipy.io.savemat(tmp_path / "m.mat", {"maskRS2": np.ones((64, 64), np.uint8)})
    assert_user_error(run(*base, "--mask", tmp_path / "m.mat"), "shape", output=out)
    assert_user_error(run("masks", "--kind", "spiral", "--ratio", 0.2, "--size", 8, "--out", tmp_path / "x.npy"),
                      "spiral")


def test_unreadable_dicom(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    assert_user_error(run("prepare", series, "--out", tmp_path / "o"), "DICOM", "IM0001.dcm", output=tmp_path / "o")


def test_existing_output_folder(tmp_path, phantom_dir):
    out = tmp_path / "exists"
    out.mkdir()
    assert_user_error(run("prepare", phantom_dir, "--out", out), "exists", "--overwrite")
    ok = run("prepare", phantom_dir, "--out", out, "--size", 16, "--overwrite")
    assert ok.exit_code == 0 and (out / "manifest.json").exists()


def test_real_process_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dagan_tf.cli", "prepare", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: path not found")
    assert "Traceback" not in proc.stderr
