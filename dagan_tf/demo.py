"""The end-to-end demo on the built-in MRI volume (``dagan-tf demo``).

A fixed amount of work, so every machine gets the same numbers for the same seed and precision: prepare the
volume at ``size``² in 5 slabs, score zero-filled and total variation (its weight tuned on the validation slab) on
the held-out slab in the **phase regime** (phase-bearing k-space) with a Cartesian mask with a calibration
centre (:data:`DEMO_MASK`, R4), train the ``recnet-fast`` recipe (a residual RecNet, lr 1e-3 with a cosine
decay over the run, batch 16, precision ``auto``) for :data:`DEMO_STEPS` steps, evaluate it beside zero-filled
and TV, export it (precision ``auto``) and reconstruct the whole volume with the export.  ``minutes``
optionally caps training (and says so when it does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dagan_tf import recipes
from dagan_tf.data.demo import demo_volume_path
from dagan_tf.data.prepare import PrepareConfig, prepare
from dagan_tf.masks import MaskSpec
from dagan_tf.outputs import atomic_output_dir

DEMO_RECIPE = "recnet-fast"
DEMO_STEPS = 1000
STEPS_PER_EPOCH = 100
DEMO_MASK = MaskSpec("vds1d", 0.25, acs=8)  # R4, 8 fully sampled centre lines
DEMO_REGIME = "phase"


def demo_overrides(size: int, steps: int, minutes: float | None) -> list[str]:
    """The ``--set`` overrides that turn :data:`DEMO_RECIPE` into the demo's run: ``steps`` steps of batch 16 at
    ``size``², the cosine over those steps (no CPU budget)."""
    per_epoch = min(STEPS_PER_EPOCH, steps)
    epochs = -(-steps // per_epoch)
    return [f"model.image_size={size}", f"data.mask={DEMO_MASK.kind}", f"data.ratio={DEMO_MASK.ratio}",
            f"data.acs={DEMO_MASK.acs}", f"data.regime={DEMO_REGIME}", "train.batch_size=16",
            "train.val_batch_size=16", f"train.steps_per_epoch={per_epoch}", f"train.epochs={epochs}",
            "train.max_cpu_minutes=null", f"train.max_minutes={minutes if minutes else 'null'}"]


def _point_run_at(run: Path, data: Path) -> None:
    """Record the final data folder in the run's config (it was trained inside the hidden build folder)."""
    config = recipes.load_config_file(run / "config.yaml")
    config["data"]["folder"] = str(data)
    (run / "config.yaml").write_text(recipes.dump(config))


def run_demo(out: str | Path, size: int = 128, steps: int | None = None, minutes: float | None = None,
             overwrite: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Run the demo into ``out`` (built in a hidden folder, moved into place when complete)."""
    from dagan_tf.baselines import build_baselines
    from dagan_tf.evaluate import evaluate, format_table
    from dagan_tf.export import export_run_network
    from dagan_tf.hardware import machine_inference_precision
    from dagan_tf.inference import load_run_reconstructor
    from dagan_tf.training.trained import load_run_network
    from dagan_tf.predict import predict_volume
    from dagan_tf.training.run import mask_spec, train

    steps = steps or DEMO_STEPS
    volume = demo_volume_path()
    config = recipes.apply_overrides(recipes.load_recipe(DEMO_RECIPE), demo_overrides(size, steps, minutes))
    out = Path(out)
    with atomic_output_dir(out, overwrite) as tmp:
        data = tmp / "data"
        echo(f"1/6 preparing the demo volume {volume} at {size}² (5 slabs as subjects)")
        prepare([str(volume)], data, PrepareConfig(size=size, split=(0.6, 0.2, 0.2), slabs=5))
        echo(f"2/6 zero-filled and total variation on the test slab ({DEMO_MASK.kind} {DEMO_MASK.ratio:g} with "
             f"{DEMO_MASK.acs} centre lines, {DEMO_REGIME} regime; TV's weight tuned on the validation slab)")
        tv, settings = build_baselines(["tv"], data, DEMO_MASK, tune=True, echo=lambda line: echo(f"    {line}"),
                                       regime=DEMO_REGIME)
        echo(format_table(evaluate(data, DEMO_MASK, tmp / "eval-baselines", reconstructors=tv, settings=settings,
                                   regime=DEMO_REGIME, title="demo: zero-filled and TV")))
        echo(f"3/6 training {DEMO_RECIPE} ({size}², batch 16) for {steps} steps")
        train(tmp / "run", config, data, echo=lambda line: echo(f"    {line}"))
        _point_run_at(tmp / "run", out.resolve() / "data")
        echo("4/6 evaluating the trained network beside zero-filled and TV")
        reconstructor = load_run_reconstructor(tmp / "run")
        echo(format_table(evaluate(data, mask_spec(config), tmp / "eval", reconstructors={"model": reconstructor, **tv},
                                   settings=settings, regime=DEMO_REGIME,
                                   title=f"demo: {DEMO_RECIPE} vs zero-filled and TV")))
        precision = machine_inference_precision("auto")
        echo(f"5/6 exporting the network for TF Serving (computing in {precision})")
        network, config = load_run_network(tmp / "run", inference=True, precision=precision)
        export_run_network(network, config, tmp / "export" / "1", precision)
        echo("6/6 reconstructing the whole demo volume with the export")
        predict_volume(tmp / "export" / "1", volume, tmp / "reconstruction.nii.gz", DEMO_MASK, regime=DEMO_REGIME)
    final = out.resolve()
    echo(f"\nDone. Everything is in {final}:")
    for name, what in (("eval/report.md", f"report: {DEMO_RECIPE} beside zero-filled and TV on the held-out slab"),
                       ("eval/examples.png", "figure: examples with error maps"),
                       ("run", "training run (checkpoints, history.csv, config.yaml)"),
                       ("export/1", "SavedModel for TF Serving"),
                       ("reconstruction.nii.gz", "the demo volume reconstructed from 25 % of its k-space lines")):
        echo(f"  {final / name}  {what}")
    echo(f"TensorBoard: tensorboard --logdir {final / 'run' / 'logs'}")
    return out
