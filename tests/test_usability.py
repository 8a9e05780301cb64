"""What a new user meets: progress, logs, discovery, permissions, figures, the demo."""
import json
import os
import pty
import select
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import phantom_volume, run, write_nifti
from dagan_tf import recipes
from dagan_tf.data.prepare import PrepareConfig, load_split, prepare
from dagan_tf.figures import FigureRow, comparison_figure
from dagan_tf.hardware import cpu_info, resolve_precision


def _eval_args(prepared, out):
    return [sys.executable, "-m", "dagan_tf.cli", "eval", "--model", "zero-filled", "--data", str(prepared),
            "--mask", "gaussian1d", "--ratio", "0.3", "--out", str(out)]


def test_progress_bar_on_a_terminal_and_plain_lines_when_redirected(tmp_path, prepared_dir):
    redirected = subprocess.run(_eval_args(prepared_dir, tmp_path / "a"), capture_output=True, text=True)
    assert redirected.returncode == 0, redirected.stderr
    assert "\r" not in redirected.stderr + redirected.stdout and "\x1b" not in redirected.stderr
    n = len(load_split(prepared_dir, "test").images)
    assert f"eval zero_filled on test: {n} slices in" in redirected.stderr

    leader, follower = pty.openpty()
    proc = subprocess.Popen(_eval_args(prepared_dir, tmp_path / "b"), stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0
    assert b"\r" in seen and f"{n}/{n}".encode() in seen, seen[-500:]


def test_recipes_list_and_show_round_trip_through_set(tmp_path):
    listing = run("recipes")
    assert listing.exit_code == 0
    for name in recipes.recipe_names():
        assert any(line.startswith(name) and len(line.split()) > 2 for line in listing.output.splitlines())
    shown = run("recipes", "show", "ppgr", "--set", "train.batch_size=3")
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line.startswith("  ")]
    assert lines and all("  # " in line for line in lines), "every key has its comment"
    (tmp_path / "shown.yaml").write_text(shown.output)
    expected = recipes.apply_overrides(recipes.load_recipe("ppgr"), ["train.batch_size=3"])
    assert recipes.load_config_file(tmp_path / "shown.yaml") == expected
    parsed = yaml.safe_load(shown.output)
    sets = [f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for section, values in parsed.items() if isinstance(values, dict) for key, value in values.items()]
    assert recipes.apply_overrides(recipes.load_recipe("pg"), sets)["model"] == expected["model"]
    assert recipes.apply_overrides(recipes.load_recipe("pg"), sets)["train"] == expected["train"]
    assert "recipes show" in run("train", "--help").output


def test_every_option_has_help():
    from dagan_tf.cli import main

    def commands(group):
        for command in group.commands.values():
            yield command
            if hasattr(command, "commands"):
                yield from commands(command)

    for command in commands(main):
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{command.name} {param.opts} has no help"


def test_outputs_follow_the_umask(tmp_path, prepared_dir):
    previous = os.umask(0o027)
    try:
        out = tmp_path / "e"
        assert run("eval", "--model", "zero-filled", "--data", prepared_dir, "--mask", "gaussian1d",
                   "--ratio", 0.3, "--out", out).exit_code == 0
        assert run("masks", "--kind", "gaussian1d", "--ratio", 0.3, "--size", 16,
                   "--out", tmp_path / "m.npy").exit_code == 0
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m.npy").stat().st_mode & 0o777 == 0o640


def test_comparison_figure_layout():
    rng = np.random.default_rng(0)
    target = rng.random((32, 32))
    row = FigureRow("subject slice 3", target, {"zero_filled": target * 0.9, "model": target}, {"model": (40.0, 0.9)})
    two = comparison_figure([row, row])
    one_method = comparison_figure([FigureRow("s", target, {"zero_filled": target})])
    assert two.dtype == np.uint8 and two.shape[2] == 3
    # 5 columns (truth, 2 × (image, error)) against 3, 2 rows against 1; each with a colour bar
    assert two.shape[1] > one_method.shape[1] * 1.4 and two.shape[0] > one_method.shape[0] * 1.5
    assert two.std() > 0


def test_eval_figure_and_dc_label(tmp_path, trained_run, real_slices):
    import json

    from PIL import Image

    out = tmp_path / "dc"
    result = run("eval", "--run", trained_run, "--no-baselines", "--data", real_slices, "--out", out, "--dc")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "model+dc" in metrics and "model+dc" in result.output
    assert {"zero_filled_dc1", "zero_filled_dc100"} <= set(metrics), "--dc shows the projection baseline"
    figure = Image.open(out / "examples.png")
    n = min(4, metrics["n_slices"])
    assert figure.mode == "RGB" and figure.size[1] > 150 * n and figure.size[0] > 9 * 150  # 4 methods + truth
    assert "model+dc |error|" in (out / "report.md").read_text()


def test_slices_csv_records_the_source_axial_index(tmp_path):
    volume = phantom_volume(32, 12)
    volume[..., :3] = 0  # empty slices, dropped
    src = write_nifti(tmp_path / "a.nii.gz", volume)
    prepare([str(src)], tmp_path / "p", PrepareConfig(size=32, split=(1.0, 0.0, 0.0), min_foreground=0.05))
    numbers = load_split(tmp_path / "p", "train").slice_numbers
    assert numbers[0] >= 3 and list(numbers) == list(range(numbers[0], numbers[0] + len(numbers)))


def test_auto_precision_follows_the_hardware():
    assert resolve_precision("auto", cpu_flags=frozenset({"avx2", "fma"})) == "float32"
    assert resolve_precision("auto", cpu_flags=frozenset({"avx2", "avx512_bf16"})) == "mixed_bfloat16"
    assert resolve_precision("auto", cpu_flags=frozenset({"amx_bf16"})) == "mixed_bfloat16"
    assert resolve_precision("auto", frozenset({"avx512_bf16"}), gpu_compute_capabilities=[(7, 5)]) == "mixed_float16"
    assert resolve_precision("auto", frozenset({"avx512_bf16"}), gpu_compute_capabilities=[(8, 6), (6, 1)]) == "float32"
    assert resolve_precision("auto", frozenset(), gpu_compute_capabilities=[(8, 0), (9, 0)]) == "mixed_bfloat16"
    assert resolve_precision("float32", frozenset({"avx512_bf16"})) == "float32"
    model, flags = cpu_info("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert model == "Test CPU" and "avx512_bf16" in flags


def test_inference_precision_follows_the_hardware():
    """auto: bfloat16 only where it is native (AMX or AVX512-BF16 CPUs, Ampere+ GPUs); an AVX2-only CPU and a
    Turing GPU (whose training auto is float16) infer in float32; explicit values are kept."""
    from dagan_tf.hardware import inference_precision, keras_policy

    assert inference_precision("auto", frozenset({"avx2", "fma", "avx512f"})) == "float32"
    assert inference_precision("auto", frozenset({"avx2", "avx512_bf16"})) == "bfloat16"
    assert inference_precision("auto", frozenset({"amx_bf16", "amx_tile"})) == "bfloat16"
    assert inference_precision("auto", frozenset({"avx512_bf16"}), gpu_compute_capabilities=[(7, 5)]) == "float32"
    assert inference_precision("auto", frozenset(), gpu_compute_capabilities=[(8, 6)]) == "bfloat16"
    assert inference_precision("bfloat16", frozenset({"avx2"})) == "bfloat16"
    assert inference_precision("float32", frozenset({"amx_bf16"})) == "float32"
    assert keras_policy("bfloat16") == "mixed_bfloat16" and keras_policy("float32") == "float32"
    with pytest.raises(ValueError):
        inference_precision("float16")


def test_kernel_choice_follows_the_instruction_set():
    from dagan_tf.hardware import (GEMM_MAX_POSITIONS, inference_matmul_layout, kernel_isa, split_batch_of_one,
                                   target_isa, target_kernels, use_gemm, use_tap_gemm)

    avx512, avx2, old = frozenset({"avx2", "avx512f", "avx512_bf16"}), frozenset({"avx2", "fma"}), frozenset({"sse4_2"})
    amx = avx512 | {"amx_bf16", "amx_tile"}
    assert [kernel_isa(f) for f in (amx, avx512, avx2, old)] == ["amx", "avx512", "avx2", "baseline"]
    # oneDNN limited to an older set (ONEDNN_MAX_CPU_ISA) runs that set's kernels; a higher limit changes nothing
    assert kernel_isa(avx512, "AVX2") == "avx2" and kernel_isa(avx512, "SSE41") == "baseline"
    assert kernel_isa(avx2, "AVX512_CORE_AMX") == "avx2" and kernel_isa(avx512, "native") == "avx512"
    assert kernel_isa(amx, "AVX512_CORE_AMX") == "amx" and kernel_isa(amx, "AVX512_CORE_BF16") == "avx512"
    assert kernel_isa(amx, "AVX2") == "avx2" and kernel_isa(amx, "ALL") == "amx"
    assert GEMM_MAX_POSITIONS["amx"] == 256  # measured on a Xeon with AMX (hardware.py)
    for flags, isa in ((amx, "amx"), (avx512, "avx512"), (avx2, "avx2"), (old, "baseline")):
        limit = GEMM_MAX_POSITIONS[isa]
        assert use_gemm(limit, flags) and not use_gemm(limit + 1, flags)
        assert use_gemm(1, flags) and not use_gemm(None, flags)  # a dynamic size uses oneDNN
    # matmul-layout kernels in inference copies only where oneDNN runs AVX-512 kernels without AMX (measured faster
    # there only)
    assert [inference_matmul_layout(f) for f in (amx, avx512, avx2, old)] == [False, True, False, False]
    assert not inference_matmul_layout(avx512, "AVX2")
    # ... and in float32 only: oneDNN's bf16 product of few rows is faster in the training layout
    assert not any(inference_matmul_layout(f, precision="bfloat16") for f in (amx, avx512, avx2, old))
    # row blocks for a batch of one only where oneDNN runs AVX2 kernels (its slow gemm:jit convolution at batch 1)
    assert [split_batch_of_one(f) for f in (amx, avx512, avx2, old)] == [False, False, True, False]
    assert split_batch_of_one(avx512, "AVX2")
    # per-tap path: one output channel, stride 1, odd kernel sides, on every class (measured on avx512 and avx2)
    for flags in (amx, avx512, avx2, old):
        assert use_tap_gemm(1, (9, 9), (1, 1), flags) and use_tap_gemm(1, (1, 1), (1, 1), flags)
        assert not use_tap_gemm(2, (5, 5), (1, 1), flags) and not use_tap_gemm(1, (4, 4), (1, 1), flags)
        assert not use_tap_gemm(1, (3, 3), (2, 2), flags)
    # an export for another CPU: the default-flag choices follow target_kernels, and only inside it
    here = (split_batch_of_one(), inference_matmul_layout())
    for isa, choices in (("avx2", (True, False)), ("avx512", (False, True)), ("amx", (False, False))):
        with target_kernels(isa):
            assert target_isa() == isa and (split_batch_of_one(), inference_matmul_layout()) == choices
    assert (split_batch_of_one(), inference_matmul_layout()) == here
    with pytest.raises(ValueError, match="sse"), target_kernels("sse"):
        pass


def test_train_adopts_the_data_image_size(tmp_path, real_slices):
    from conftest import tiny_config
    from dagan_tf.training.run import train

    lines = []
    train(tmp_path / "r", tiny_config("pg", "model.image_size=64", "train.epochs=1"), real_slices,
          echo=lines.append, verbose=0)
    assert any("model.image_size 64 -> 32" in line for line in lines)
    assert any("sampled fraction" in line and "precision" in " ".join(lines) for line in lines)
    assert recipes.load_config_file(tmp_path / "r" / "config.yaml")["model"]["image_size"] == 32


def test_demo_does_a_fixed_number_of_steps(tmp_path):
    pytest.importorskip("nilearn", reason="the 'demo' extra (nilearn) is not installed")
    import nibabel as nib

    from dagan_tf.data.demo import demo_volume_path
    from dagan_tf.demo import run_demo

    lines = []
    out = run_demo(tmp_path / "demo", size=32, steps=6, echo=lines.append)
    history = (out / "run" / "history.csv").read_text().strip().splitlines()
    config = recipes.load_config_file(out / "run" / "config.yaml")
    assert config["train"]["steps_per_epoch"] * (len(history) - 1) == 6
    assert config["data"]["folder"] == str((out / "data").resolve())
    for name in ("eval/report.md", "eval/examples.png", "eval-baselines/metrics.json", "export/1/saved_model.pb",
                 "run/best.weights.h5"):
        assert (out / name).exists(), name
    assert config["recipe"] == "recnet-fast" and config["data"]["regime"] == "phase"
    # the comparison rows: the network beside zero-filled and TV (tuned), in the phase regime, on the same slices
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"model", "tv", "zero_filled"} <= set(metrics) and metrics["regime"].startswith("phase")
    assert metrics["reconstructor_settings"]["tv"]["lambda_source"] == "tuned on validation NMSE"
    baselines = json.loads((out / "eval-baselines" / "metrics.json").read_text())
    assert baselines["tv"]["psnr"]["mean"] == metrics["tv"]["psnr"]["mean"]
    assert json.loads((out / "export" / "1" / "dagan_tf.json").read_text())["precision"] in ("float32", "bfloat16")
    assert nib.load(str(out / "reconstruction.nii.gz")).shape == nib.load(str(demo_volume_path())).shape
    summary = "\n".join(lines)
    assert "tensorboard --logdir" in summary and "reconstruction.nii.gz" in summary
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
