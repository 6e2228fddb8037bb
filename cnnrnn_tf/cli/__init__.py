"""The ``cnnrnn`` command line. ``python -m cnnrnn_tf.cli`` and the console script
``cnnrnn`` (``cnnrnn_tf.cli:run``) both enter :mod:`cnnrnn_tf.cli.app`."""
from cnnrnn_tf.cli.app import main, run  # noqa: F401
