"""How long `model.fit` takes to return after its last epoch, with and without tf.data's autotuning thread.

    PYTHONPATH=. python benchmarks/iterator_teardown.py [SECONDS] [REPEATS]    # defaults: 90 s, 3

Each fit trains a tiny two-head model on the quick start's training pipeline (the built-in `shapes` set,
flip_crop, batch 128, validation every epoch) for about SECONDS, with a callback that keeps a core busy for
0.11 CPU-seconds after each step (about the quick start's step time), so the batches are drawn at a real run's
pace on loaded cores. When fit returns, Keras deletes the training iterator. "autotune thread" is tf.data's
default; "without" is the package's pipeline (`images.without_autotune_thread`). REPEATS fits of each run at
once, each in its own process; each prints the seconds between its last callback (`on_train_end`) and fit's
return. The wait comes only sometimes (BUILD_NOTES.md, "Input pipeline speed"): run it more than once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STEP_S, STEPS = 0.11, 79
VARIANTS = ("autotune thread", "without")


def one_fit(variant: str, seconds: float) -> None:
    import keras
    import tensorflow as tf

    from mtl_keras.data import datasets, pipeline

    splits = datasets.load("shapes")
    train = pipeline.pipeline(splits.train, splits.info, batch_size=128, training=True, augment="flip_crop")
    if variant == "autotune thread":
        options = tf.data.Options()
        options.autotune.enabled = True
        train = train.with_options(options)
    val = pipeline.pipeline(splits.val, splits.info, batch_size=128)
    image = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(image)
    model = keras.Model(image, {h: keras.layers.Dense(n, activation="softmax", name=h)(pooled)
                                for h, n in splits.info.num_classes.items()})
    model.compile("adam", {h: "categorical_crossentropy" for h in splits.info.num_classes})

    class Paced(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # busy, as a step is: the cores stay loaded
            until = time.process_time() + STEP_S
            while time.process_time() < until:
                pass

        def on_train_end(self, logs=None):
            self.ended = time.time()

    paced = Paced()
    epochs = int(seconds / (STEPS * STEP_S)) + 1
    model.fit(train, validation_data=val, epochs=epochs, steps_per_epoch=STEPS, verbose=0, callbacks=[paced],
              shuffle=False)
    print(f"{variant:<16} {epochs} epochs   fit returned {time.time() - paced.ended:6.2f} s after its last epoch",
          flush=True)


def main(seconds: float = 90.0, repeats: int = 3) -> None:
    import tensorflow as tf

    print(f"tf {tf.__version__}, {os.cpu_count()} cores; {repeats} fits of about {seconds:g} s of each, at once")
    procs = [subprocess.Popen([sys.executable, __file__, "--one", variant, str(seconds)])
             for variant in VARIANTS for _ in range(repeats)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one_fit(sys.argv[2], float(sys.argv[3]))
    else:
        main(*(float(a) for a in sys.argv[1:2]), *(int(a) for a in sys.argv[2:3]))
