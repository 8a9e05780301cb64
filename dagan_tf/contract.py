"""What a reconstruction network takes and returns: declared once per trainer (:data:`dagan_tf.recipes.TRAINERS`,
:func:`dagan_tf.recipes.network_contract`), read by every path that runs a network (:mod:`dagan_tf.inference`:
evaluation, comparison, prediction, export, the training callbacks).  No TensorFlow here: recipes import it."""
from __future__ import annotations

from dataclasses import dataclass

INPUT_KINDS = ("image", "kspace", "coil_kspace")


@dataclass(frozen=True)
class NetworkContract:
    """A network's inputs (``takes``) and outputs.

    ``takes`` (:data:`INPUT_KINDS`):

    * ``image``: the zero-filled image ``[N, S, S, channels]``: its magnitude in [0, 1] (``channels`` 1) or its
      real and imaginary parts (2);
    * ``kspace``: a single-coil k-space cascade's dict (:func:`dagan_tf.models.recnet.network_inputs` of the
      centred undersampled k-space ``[N, S, S]`` and the mask ``[N, S, S]``);
    * ``coil_kspace``: DCI-Net's dict (:func:`dagan_tf.models.dcinet.network_inputs` of coil k-space
      ``[N, C, S, S]``, mask and sensitivity maps ``[N, C, S, S]``; single-coil k-space is one coil of unit
      sensitivity).

    Output: the reconstruction ``[N, S, S, channels]`` (magnitude, or real/imaginary parts; k-space networks
    give 2), or with ``extras`` a dict of ``reconstruction`` and each extra ``[N, S, S, 1]`` (a refined network's
    ``refinement``: λ·V, what the refinement changed, in image units).  ``stage1``: the network holds its
    stage-1 network as ``.recnet`` (a ``kspace`` network), which evaluation scores beside it.
    """

    takes: str
    channels: int = 2
    extras: tuple[str, ...] = ()
    stage1: bool = False

    def __post_init__(self):
        if self.takes not in INPUT_KINDS:
            raise ValueError(f"takes must be one of {', '.join(INPUT_KINDS)}, got {self.takes!r}")
        if self.channels not in (1, 2) or (self.takes != "image" and self.channels != 2):
            raise ValueError(f"a {self.takes} network gives 2 channels (1 only for a magnitude image network)")


CASCADE = NetworkContract("kspace")  # a RecNet cascade: the stage-1 network of a refined one
