"""`mtl-keras predict --model=PATH IMAGE...` (or `python -m mtl_keras.predict`): the program lives in
mtl_keras/serving/predict.py."""

import sys

from mtl_keras.serving.predict import main

if __name__ == "__main__":
    sys.exit(main())
