from cnnrnn_tf.models.beam_search import *  # noqa: F401,F403  (moved in 0.5.0; this shim goes in 0.6.0)
