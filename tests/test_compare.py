"""dagan-tf compare: the same numbers as eval, paired statistics as scipy computes them, the cache."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import SIZE, assert_user_error, run, tiny_config
from dagan_tf.compare import bootstrap_interval, median_slices
from dagan_tf.training.run import train


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, real_slices):
    out = tmp_path_factory.mktemp("runs") / "pg"
    train(out, tiny_config("pg"), real_slices)
    return out


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_compare_matches_eval_and_scipy(tmp_path, real_slices, trained_run, second_run):
    from scipy.stats import wilcoxon

    cache = tmp_path / "cache"
    out = tmp_path / "cmp"
    result = run("compare", trained_run, second_run, "--data", real_slices, "--regime", "magnitude",
                 "--cache", cache, "--out", out)
    assert result.exit_code == 0, result.output
    folder = out / "magnitude"
    table = {row["method"]: row for row in json.loads((folder / "comparison.json").read_text())["table"]}
    assert set(table) == {"zero_filled", "ppgr", "pg", "zero_filled_dc1", "zero_filled_dc100"}  # projections: magnitude
    for run_dir, name in ((trained_run, "ppgr"), (second_run, "pg")):
        alone = tmp_path / f"eval-{name}"
        assert run("eval", "--run", run_dir, "--data", real_slices, "--no-baselines", "--out", alone).exit_code == 0
        metrics = json.loads((alone / "metrics.json").read_text())
        for m in ("psnr", "ssim", "nmse"):
            assert table[name][f"{m}_mean"] == pytest.approx(metrics["model"][m]["mean"], rel=1e-6)
        assert table["zero_filled"]["psnr_mean"] == pytest.approx(metrics["zero_filled"]["psnr"]["mean"], rel=1e-6)
    # paired statistics against the reference (the first run), recomputed from per_slice.csv
    rows = _rows(folder / "per_slice.csv")
    subjects = np.array([r["subject"] for r in rows])
    diff = np.array([float(r["pg_psnr"]) - float(r["ppgr_psnr"]) for r in rows])
    per_subject = np.array([diff[subjects == s].mean() for s in dict.fromkeys(subjects)])
    means = [np.mean([float(r["pg_psnr"]) for r in rows if r["subject"] == s]) for s in dict.fromkeys(subjects)]
    assert table["pg"]["psnr_subject_mean"] == pytest.approx(np.mean(means), rel=1e-6)
    assert table["pg"]["psnr_subject_std"] == pytest.approx(np.std(means), rel=1e-5)
    stats = json.loads((folder / "comparison.json").read_text())["paired_statistics"]["pg"]["psnr"]
    assert stats["subjects"]["wilcoxon_p"] == pytest.approx(wilcoxon(per_subject).pvalue)
    assert stats["slices"]["wilcoxon_p"] == pytest.approx(wilcoxon(diff).pvalue)
    assert stats["slices"]["mean_difference"] == pytest.approx(diff.mean(), abs=1e-5)
    assert stats["subjects"]["ci95"] == pytest.approx(bootstrap_interval(per_subject), abs=1e-9)
    for name in ("comparison.md", "comparison.csv", "comparison.png", "per_subject_psnr.png"):
        assert (folder / name).is_file()
    assert "subject as the unit" in (folder / "comparison.md").read_text()
    # each network's gain over the strongest classical row, and the warning when a baseline is above it
    classical = {k: v["psnr_mean"] for k, v in table.items() if k not in ("ppgr", "pg", "zero_filled")}
    best = max(classical, key=classical.get)
    for name in ("ppgr", "pg"):
        assert table[name]["strongest_classical"] == best
        assert table[name]["psnr_gain_over_classical"] == pytest.approx(table[name]["psnr_mean"] - classical[best])
        assert table[name]["ssim_gain_over_classical"] == pytest.approx(
            table[name]["ssim_mean"] - table[best]["ssim_mean"])
        if classical[best] > table[name]["psnr_mean"]:
            assert (f"warning: {best} reaches {classical[best]:.2f} dB here, above the {name} row's "
                    f"{table[name]['psnr_mean']:.2f} dB") in result.output
    assert table["zero_filled"]["strongest_classical"] is None
    # learning curves: each run's validation PSNR against its CPU-minutes, as its history.csv has them
    curves = _rows(out / "learning_curves.csv")
    for run_dir, name in ((trained_run, "ppgr"), (second_run, "pg")):
        history = _rows(run_dir / "history.csv")
        mine = [r for r in curves if r["run"] == name]
        assert [float(r["val_psnr"]) for r in mine] == [float(h["val_psnr"]) for h in history]
        assert [float(r["cpu_minutes"]) for r in mine] == [float(h["cpu_minutes"]) for h in history]
        assert table[name]["training_cpu_minutes"] == float(history[-1]["cpu_minutes"])  # the budget it had
    assert table["zero_filled"]["training_cpu_minutes"] is None
    assert (out / "learning_curves.png").is_file()

    # a second comparison reuses both runs' cached reconstructions; a changed run is recomputed
    again = run("compare", trained_run, second_run, "--data", real_slices, "--regime", "magnitude",
                "--cache", cache, "--out", tmp_path / "cmp2")
    assert "(4 from the cache)" in again.output  # both runs and both projections
    again_table = json.loads((tmp_path / "cmp2" / "magnitude" / "comparison.json").read_text())["table"]
    assert [r["psnr_mean"] for r in again_table] == [r["psnr_mean"] for r in table.values()]
    train(second_run, resume=True, epochs=3)  # the run changes (new best weights)
    third = run("compare", trained_run, second_run, "--data", real_slices, "--regime", "magnitude",
                "--cache", cache, "--out", tmp_path / "cmp3")
    assert "(3 from the cache)" in third.output
    # --dc changes the runs' reconstructions, not the baselines': both projections come from the cache
    with_dc = run("compare", trained_run, second_run, "--data", real_slices, "--regime", "magnitude", "--dc",
                  "--cache", cache, "--out", tmp_path / "cmp4")
    assert "(2 from the cache)" in with_dc.output


def test_bootstrap_and_median_slices_by_hand():
    d = np.array([1.0, 1.0, 1.0])
    assert bootstrap_interval(d) == [1.0, 1.0]
    psnr = np.array([30.0, 10.0, 20.0, 5.0, 7.0])
    subjects = np.array(["a", "a", "a", "b", "b"])
    assert median_slices(psnr, subjects) == [2, 4]


def test_compare_errors(tmp_path, real_slices, trained_run):
    out = tmp_path / "c"
    small = tmp_path / "small-run"
    assert_user_error(run("compare", tmp_path / "nope", "--data", real_slices, "--out", out), "path not found",
                      output=out)
    assert_user_error(run("compare", trained_run, "--data", real_slices, "--reference", "x", "--out", out,
                          "--no-cache"), "--reference 'x'", output=out)
    assert_user_error(run("compare", trained_run, "--data", real_slices, "--mask", "gaussian1d", "--out", out,
                          "--no-cache"), "--ratio", output=out)
    # a run trained at another image size is refused
    import shutil

    shutil.copytree(trained_run, small)
    text = (small / "config.yaml").read_text().replace(f"image_size: {SIZE}", "image_size: 64")
    (small / "config.yaml").write_text(text)
    assert_user_error(run("compare", small, "--data", real_slices, "--out", out, "--no-cache"), "64²", f"{SIZE}²",
                      output=out)
    # two runs trained with different masks are refused unless --mask sets one for all
    other = tmp_path / "other-mask"
    shutil.copytree(trained_run, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["ratio"] = 0.5 if config["data"]["ratio"] != 0.5 else 0.25
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(run("compare", trained_run, other, "--data", real_slices, "--out", out, "--no-cache"),
                      "the runs use different masks", output=out)
    # masks that differ only in being drawn per slice are named as such
    config["data"]["ratio"] = yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["ratio"]
    config["data"]["per_sample_masks"] = True
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(run("compare", trained_run, other, "--data", real_slices, "--out", out, "--no-cache"),
                      "one mask for all slices; other-mask:", "one mask per slice", output=out)
