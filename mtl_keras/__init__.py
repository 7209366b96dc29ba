"""mtl_keras: multi-task (fine + coarse) image classification with Keras 3."""

from mtl_keras import console

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notices) buries the run's own first lines: silenced
# before anything imports TensorFlow, unless the user sets TF_CPP_MIN_LOG_LEVEL or passes --verbose.
console.quiet_native_logs()
# The frameworks' imports make hundreds of thousands of objects: collected once afterwards, not again and again
# during the import.
console.pause_collector_in_framework_imports()

__version__ = "0.2.0"
