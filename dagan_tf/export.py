"""Export a trained network as a TF Serving SavedModel.

Signatures (``H = W`` = the model's image size):

* ``serving_default``: ``zero_filled`` float32 ``[N, H, W, 1]`` (magnitude in [0, 1]; for a
  complex network ``[N, H, W, 2]``, the real and imaginary parts of the complex zero-filled
  image) -> ``reconstruction`` float32 ``[N, H, W, 1]`` (magnitude).
* cascades (RecNet, refined networks): ``serving_default`` takes the k-space inputs of
  ``from_kspace`` below (no data consistency added) -> ``reconstruction`` and, for a refined
  network, ``refinement`` ``[N, H, W, 1]`` (what the refinement changed, λ·V in image units).
* DCI-Net: ``serving_default`` takes coil k-space ``kspace_real``, ``kspace_imag`` ``[N, C, H, W]``
  (centred, undersampled), coil maps ``maps_real``, ``maps_imag`` ``[N, C, H, W]`` (``Σ_c |S_c|² = 1``)
  and ``mask`` ``[N, H, W]`` -> ``reconstruction`` ``[N, H, W, 1]``.
* ``from_kspace``: ``kspace_real``, ``kspace_imag`` float32 ``[N, H, W]`` (centred
  undersampled k-space, zero off the mask, of an image scaled to [0, 1]) and ``mask``
  float32 ``[N, H, W]`` -> ``reconstruction`` ``[N, H, W, 1]`` after hard data
  consistency, and ``zero_filled`` ``[N, H, W, 1]``.  Real and imaginary parts are
  separate inputs because TF Serving's REST API has no complex type.

The module is a plain ``tf.Module`` saved with ``tf.saved_model.save``, so each
variable is stored once (Keras' ``model.export`` stores them twice).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf.contract import NetworkContract
from dagan_tf.recipes import network_contract
from dagan_tf.errors import DaganError
from dagan_tf.hardware import target_isa
from dagan_tf.models.network_io import apply_dc, as_complex_image, network_input, run_network, split_output
from dagan_tf.outputs import atomic_output_dir


def _kspace_planes(size: int) -> list[tf.TensorSpec]:
    plane = [None, size, size]
    return [tf.TensorSpec(plane, tf.float32, name="kspace_real"), tf.TensorSpec(plane, tf.float32, name="kspace_imag"),
            tf.TensorSpec(plane, tf.float32, name="mask")]


def _coil_planes(size: int) -> list[tf.TensorSpec]:
    coils = [None, None, size, size]
    return [tf.TensorSpec(coils, tf.float32, name=name) for name in ("kspace_real", "kspace_imag", "maps_real",
                                                                      "maps_imag")] \
        + [tf.TensorSpec([None, size, size], tf.float32, name="mask")]


def _kspace(kspace_real, kspace_imag, mask) -> tf.Tensor:
    """Complex k-space ``[N, H, W]`` (or coil k-space ``[N, C, H, W]`` with ``mask [N, 1, H, W]``), zero off the mask."""
    return tf.complex(kspace_real, kspace_imag) * tf.cast(tf.complex(mask, tf.zeros_like(mask)), tf.complex64)


class ReconstructionModule(tf.Module):
    """Serving wrapper of a network of ``size``² images with the given ``contract`` (module doc)."""

    def __init__(self, network: keras.Model, contract: NetworkContract, size: int):
        super().__init__(name="dagan_reconstruction")
        # Not tracked: the SavedModel holds the tf.Variables the signatures read (below), each once.  Tracking the
        # Keras model instead saves its Keras 3 variables, wrappers that a session-based loader (TF Serving,
        # `saved_model_cli run`) cannot restore: "Could not find variable …" on the first request.
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "contract", contract)
        if contract.takes == "coil_kspace":
            self.serving_default = tf.function(self._serve_coils, input_signature=_coil_planes(size))
        elif contract.takes == "kspace":
            self.serving_default = tf.function(self._serve_cascade, input_signature=_kspace_planes(size))
        else:
            image = tf.TensorSpec([None, size, size, contract.channels], tf.float32, name="zero_filled")
            self.serving_default = tf.function(self._serve, input_signature=[image])
        self.from_kspace = tf.function(self._serve_kspace, input_signature=_kspace_planes(size))
        read = {id(v): v for f in (self.serving_default, self.from_kspace) for v in f.get_concrete_function().variables}
        self.serving_variables = list(read.values())

    @staticmethod
    def _outputs(reconstruction: tf.Tensor, extras: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """``reconstruction`` magnitude ``[N, S, S, 1]`` and the contract's extras (a refined network's
        ``refinement`` map)."""
        return {"reconstruction": tf.abs(as_complex_image(reconstruction))[..., None], **extras}

    def _serve(self, zero_filled):
        return self._outputs(*split_output(self.contract, self.network(zero_filled, training=False)))

    def _serve_cascade(self, kspace_real, kspace_imag, mask):
        return self._outputs(*run_network(self.network, self.contract, None,
                                          _kspace(kspace_real, kspace_imag, mask), mask))

    def _serve_coils(self, kspace_real, kspace_imag, maps_real, maps_imag, mask):
        k0 = _kspace(kspace_real, kspace_imag, mask[:, None])
        return self._outputs(*run_network(self.network, self.contract, None, k0, mask,
                                          tf.complex(maps_real, maps_imag)))

    def _serve_kspace(self, kspace_real, kspace_imag, mask):
        k0 = _kspace(kspace_real, kspace_imag, mask)
        image = ks.ifft2c(k0)
        out, _ = run_network(self.network, self.contract, image, k0, mask)
        return {"reconstruction": apply_dc(out, k0, mask), "zero_filled": tf.abs(image)[..., None]}


METADATA = "dagan_tf.json"  # beside saved_model.pb: what the network was trained on (TF Serving ignores it)


def export_network(network: keras.Model, contract: NetworkContract, size: int, out: str | Path,
                     overwrite: bool = False, metadata: dict | None = None) -> Path:
    """Write the SavedModel of ``network`` (``size``² images, ``contract``) atomically and return its folder;
    ``metadata`` (e.g. the recipe, mask and k-space regime of the run) goes to :data:`METADATA` in it.  The graph
    is traced here, with the kernel choices of :func:`dagan_tf.hardware.target_kernels` in force (make the
    inference copy inside it too)."""
    module = ReconstructionModule(network, contract, size)
    with atomic_output_dir(out, overwrite) as tmp, warnings.catch_warnings():
        if metadata is not None:
            (tmp / METADATA).write_text(json.dumps(metadata, indent=2))
        # tracing a cascade's Keras call for the SavedModel makes Keras compare a tracked copy of the input
        # dict with the plain one and warn that their "structure" differs; the keys and shapes are the same
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serving_default,
                                                          "from_kspace": module.from_kspace})
    return Path(out)


def export_run_network(network: keras.Model, config: dict, out: str | Path, precision: str,
                       overwrite: bool = False) -> Path:
    """:func:`export_network` of a run's network (``config``: its contract, image size and :func:`run_metadata`;
    ``precision``: the one it computes in)."""
    return export_network(network, network_contract(config), config["model"]["image_size"], out, overwrite,
                            run_metadata(config, precision))


def run_metadata(config: dict, precision: str) -> dict:
    """:data:`METADATA` of an export of a run with ``config``: recipe, trainer, image size, data settings (mask,
    regime; not the folder), the kernel class in force (:func:`dagan_tf.hardware.target_isa`) and ``precision``."""
    return {"recipe": config["recipe"], "trainer": config["trainer"], "image_size": config["model"]["image_size"],
            "data": {k: v for k, v in config["data"].items() if k != "folder"}, "kernels": target_isa(),
            "precision": precision}


KSPACE_INPUTS = {"kspace_real", "kspace_imag", "mask"}
COIL_INPUTS = KSPACE_INPUTS | {"maps_real", "maps_imag"}


def check_export_signatures(signatures, path) -> None:
    """Raise unless ``signatures`` are this package's: ``serving_default`` taking ``zero_filled`` (image networks)
    or the k-space planes (cascades), and ``from_kspace``."""
    expected = {"serving_default": ({"zero_filled"}, KSPACE_INPUTS, COIL_INPUTS), "from_kspace": (KSPACE_INPUTS,)}
    for name, choices in expected.items():
        if name not in signatures or set(signatures[name].structured_input_signature[1]) not in choices:
            raise DaganError(f"{path} is not a dagan-tf export (no signature {name} with inputs "
                             f"{' or '.join(', '.join(sorted(c)) for c in choices)}); load only exports you trust")


def load_export(path: str | Path) -> tuple[Callable[[tf.Tensor, tf.Tensor], tuple], int, Callable]:
    """``(network, image_size, from_kspace)`` of an exported SavedModel: ``serving_default`` as a function of
    centred undersampled k-space ``[N, S, S]`` (complex) and mask ``[N, S, S]`` -> ``(reconstruction, extras)``
    (the magnitude ``[N, S, S, 1]``, and e.g. a refined network's ``refinement``), and the ``from_kspace``
    signature.

    The signatures are checked before anything runs.  A SavedModel executes its
    own graph: load only exports you trust.
    """
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # corrupt protobufs, missing variables, ... raise many types
        raise DaganError(f"cannot load the SavedModel {path}: {str(exc).splitlines()[0][:200]} (corrupt?)") from None
    check_export_signatures(loaded.signatures, path)
    signature = loaded.signatures["serving_default"]
    contract, size = serving_contract(signature)

    def network(kspace0, mask):
        outputs = signature(**serving_inputs(contract, kspace0, mask))
        return outputs["reconstruction"], {k: outputs[k] for k in contract.extras}

    return network, size, loaded.signatures["from_kspace"]


def serving_contract(signature) -> tuple[NetworkContract, int]:
    """The contract of the network behind a ``serving_default`` signature (its inputs and outputs, module doc)
    and its image side."""
    inputs = signature.structured_input_signature[1]
    extras = tuple(sorted(set(signature.structured_outputs) - {"reconstruction"}))
    if "zero_filled" in inputs:
        image = inputs["zero_filled"]
        return NetworkContract("image", int(image.shape[-1]), extras), int(image.shape[1])
    takes = "coil_kspace" if "maps_real" in inputs else "kspace"
    return NetworkContract(takes, 2, extras), int(inputs["mask"].shape[-1])


def serving_inputs(contract: NetworkContract, kspace0: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """The ``serving_default`` inputs of a network with ``contract`` for single-coil ``kspace0 [N, S, S]``
    (complex) and ``mask [N, S, S]``: the zero-filled image, the k-space planes, or those planes as one coil of
    unit sensitivity."""
    if contract.takes == "image":
        return {"zero_filled": network_input(ks.ifft2c(kspace0), contract.channels)}
    planes = kspace_planes(kspace0, mask)
    if contract.takes == "kspace":
        return planes
    ones = tf.ones_like(planes["kspace_real"][:, None])
    return {"kspace_real": planes["kspace_real"][:, None], "kspace_imag": planes["kspace_imag"][:, None],
            "maps_real": ones, "maps_imag": tf.zeros_like(ones), "mask": planes["mask"]}


def export_metadata(path: str | Path) -> dict:
    """The :data:`METADATA` of an export (empty for exports without one)."""
    try:
        return json.loads((Path(path) / METADATA).read_text())
    except (OSError, ValueError):
        return {}


def kernels_note(path: str | Path, built: str | None) -> str | None:
    """A line saying that the export at ``path``, built for kernel class ``built`` (its metadata's ``kernels``), was
    built for another class than this machine runs (the same outputs, perhaps slower; see
    ``dagan-tf export --kernels``), else None (also for older exports, ``built`` None)."""
    here = target_isa()
    if built is None or built == here:
        return None
    return (f"note: {path} was built for {built} kernels and this CPU runs {here} ones: the same outputs, "
            "perhaps slower ('dagan-tf export --kernels auto' builds it for this CPU)")


def kspace_planes(kspace0: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """The ``kspace_real``, ``kspace_imag`` and ``mask`` inputs of the k-space signatures."""
    return {"kspace_real": tf.math.real(kspace0), "kspace_imag": tf.math.imag(kspace0),
            "mask": tf.broadcast_to(tf.cast(mask, tf.float32), tf.shape(kspace0))}
