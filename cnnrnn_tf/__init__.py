"""cnnrnn_tf: CNN-RNN multi-label image classification in Keras/TensorFlow."""

__version__ = "0.4.0"
