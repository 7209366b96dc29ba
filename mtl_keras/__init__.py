"""mtl_keras: multi-task (fine + coarse) image classification with Keras 3."""

import os

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notices) buries the training log; users can
# still set TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.2.0"
