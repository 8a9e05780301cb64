"""The end-to-end demo on the built-in MRI volume (``dagan-tf demo``).

A fixed amount of work, so every machine gets the same numbers for the same
seed: prepare the volume at ``size``² in 5 slabs, score zero-filled on the
held-out slab, train a CPU-sized PPGR (width 0.25, precision ``auto``,
gaussian2d 30 %) for :data:`DEMO_STEPS` steps, evaluate it against
zero-filled, export it and reconstruct the whole volume with the export.
``minutes`` optionally caps training (and says so when it does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dagan_tf import recipes
from dagan_tf.data.demo import demo_volume_path
from dagan_tf.data.prepare import PrepareConfig, prepare
from dagan_tf.masks import MaskSpec
from dagan_tf.outputs import atomic_output_dir

DEMO_STEPS = 1000
STEPS_PER_EPOCH = 20
DEMO_MASK = MaskSpec("gaussian2d", 0.3)


def demo_overrides(size: int, steps: int, minutes: float | None) -> list[str]:
    """The ``--set`` overrides that turn the ``ppgr`` recipe into the demo's CPU-sized run."""
    per_epoch = min(STEPS_PER_EPOCH, steps)
    epochs = -(-steps // per_epoch)
    return [f"model.image_size={size}", "model.width=0.25", f"data.mask={DEMO_MASK.kind}",
            f"data.ratio={DEMO_MASK.ratio}", "train.batch_size=8", "train.val_batch_size=16",
            f"train.steps_per_epoch={per_epoch}", f"train.epochs={epochs}", "train.patience=0",
            "train.lr_halve_every=0", "train.precision=auto",
            f"train.max_minutes={minutes if minutes else 'null'}"]


def _point_run_at(run: Path, data: Path) -> None:
    """Record the final data folder in the run's config (it was trained inside the hidden build folder)."""
    config = recipes.load_config_file(run / "config.yaml")
    config["data"]["folder"] = str(data)
    (run / "config.yaml").write_text(recipes.dump(config))


def run_demo(out: str | Path, size: int = 128, steps: int | None = None, minutes: float | None = None,
             vgg_weights: str | None = None, overwrite: bool = False,
             echo: Callable[[str], None] = print) -> Path:
    """Run the demo into ``out`` (built in a hidden folder, moved into place when complete)."""
    from dagan_tf.evaluate import evaluate, format_table
    from dagan_tf.export import export_generator
    from dagan_tf.inference import load_run_generator, load_run_reconstructor
    from dagan_tf.predict import predict_volume
    from dagan_tf.training.run import train

    steps = steps or DEMO_STEPS
    volume = demo_volume_path()
    overrides = demo_overrides(size, steps, minutes)
    if vgg_weights:
        overrides.append(f"vgg.weights={vgg_weights}")
    else:
        overrides.append("loss.vgg=0")
    config = recipes.apply_overrides(recipes.load_recipe("ppgr"), overrides)
    out = Path(out)
    with atomic_output_dir(out, overwrite) as tmp:
        echo(f"1/6 preparing the demo volume {volume} at {size}² (5 slabs as subjects)")
        prepare([str(volume)], tmp / "data", PrepareConfig(size=size, split=(0.6, 0.2, 0.2), slabs=5))
        echo("2/6 zero-filled baseline on the test slab")
        echo(format_table(evaluate(tmp / "data", DEMO_MASK, tmp / "eval-zero-filled")))
        if not vgg_weights:
            echo("    note: no --vgg-weights given, so the VGG perceptual term is off (no download offline)")
        echo(f"3/6 training a CPU-sized PPGR (width 0.25, {size}²) for {steps} steps")
        train(tmp / "run", config, tmp / "data", echo=lambda line: echo(f"    {line}"))
        _point_run_at(tmp / "run", out.resolve() / "data")
        echo("4/6 evaluating the trained model against zero-filled")
        model = load_run_reconstructor(tmp / "run")
        echo(format_table(evaluate(tmp / "data", DEMO_MASK, tmp / "eval", reconstructors={"model": model},
                                   title="demo: PPGR vs zero-filled")))
        echo("5/6 exporting the model for TF Serving")
        export_generator(load_run_generator(tmp / "run", inference=True)[0], tmp / "export" / "1")
        echo("6/6 reconstructing the whole demo volume with the export")
        predict_volume(tmp / "export" / "1", volume, tmp / "reconstruction.nii.gz", DEMO_MASK)
    final = out.resolve()
    echo(f"\nDone. Everything is in {final}:")
    for name, what in (("eval/report.md", "report: PPGR vs zero-filled on the held-out slab"),
                       ("eval/examples.png", "figure: examples with error maps"),
                       ("run", "training run (checkpoints, history.csv, config.yaml)"),
                       ("export/1", "SavedModel for TF Serving"),
                       ("reconstruction.nii.gz", "the demo volume reconstructed from 30 % of k-space")):
        echo(f"  {final / name}  {what}")
    echo(f"TensorBoard: tensorboard --logdir {final / 'run' / 'logs'}")
    return out
