"""mtl_keras: multi-task (fine + coarse) image classification with Keras 3."""

from mtl_keras import console

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notices) buries the run's own first lines: silenced
# before anything imports TensorFlow, unless the user sets TF_CPP_MIN_LOG_LEVEL or passes --verbose.
console.quiet_native_logs()

__version__ = "0.2.0"
