"""Run by tests/test_distribute.py as one worker of a multi-worker cluster (``TF_CONFIG`` in the environment):
``dagan-tf ARGS``, and after training the worker's final generator weights, chief or not, saved to the
``.npz`` file named by ``DAGAN_TEST_FINAL_WEIGHTS`` (the run folder holds the chief's only)."""
import os
import sys

import numpy as np

from dagan_tf.cli import main
from dagan_tf.training.callbacks import RunState

keep = RunState.on_train_end


def on_train_end(self, logs=None):
    keep(self, logs)
    np.savez(os.environ["DAGAN_TEST_FINAL_WEIGHTS"], *[w.numpy() for w in self.model.network.weights])


RunState.on_train_end = on_train_end
sys.argv = ["dagan-tf", *sys.argv[1:]]
main()
