"""The module file handed to Transform and Trainer: a shim over the installed library.

TFX hashes this file's text for its cache key, not the library it imports; the
pipeline therefore also puts ``cnnrnn_tf.__version__`` in the Trainer's custom_config.
"""
from cnnrnn_tf.tfx_module import preprocessing_fn, run_fn  # noqa: F401
