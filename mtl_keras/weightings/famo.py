"""famo: Fast Adaptive Multitask Optimization, Liu et al. (NeurIPS 2023).

Task logits xi, z = softmax(xi); the model descends sum_k z_k log L_k, normalised (task k's gradient weight is
(z_k / L_k) / sum_j (z_j / L_j), so the weights sum to 1 like gamma / 1 - gamma); after each step xi takes one
Adam step (lr famo_lr, L2 famo_decay) along J_softmax(xi)^T delta, delta_k = log L_k(before) - log L_k(after):
a task whose loss fell faster than the others' loses weight. O(1) per step and no second forward pass: "before"
and "after" are consecutive batches' losses (the reference code recomputes the loss of the same batch after the
step), so delta carries batch noise that Adam's moments average out.

The update runs inside the loss, on the layer's non-trainable variables, so it needs no custom train step and
runs on any backend. Under a TensorFlow distribution strategy every replica weighs and steps from the whole batch's loss
(`_replica_mean`) and the variables' "mean" aggregation keeps one copy of the state: the logits move as on one
device.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

EPSILON = 1e-8


def build(layer, n: int) -> None:
    def state(name, shape=(n,)):
        return layer.add_weight(name=name, shape=shape, initializer="zeros", trainable=False, autocast=False,
                                aggregation="mean")

    layer.famo_logits = state("famo_logits")  # xi: equal weights to start
    layer.famo_m, layer.famo_v = state("famo_adam_m"), state("famo_adam_v")
    layer.famo_last = state("famo_last_loss")  # each task's latest batch loss
    layer.famo_prev = state("famo_prev_loss")  # the losses when xi was last updated
    layer.famo_fresh = state("famo_fresh")  # 1 for the tasks whose loss this step has recorded
    layer.famo_steps = state("famo_steps", ())  # xi updates so far (+1: the first step only records)


def _gradient_weights(layer, last):
    # Before the first step the other tasks have no loss yet (0): weigh by z alone until they do.
    inverse = ops.softmax(layer.famo_logits.value) / ops.where(last > 0, last, 1.0)
    return inverse / ops.sum(inverse)


def loss(layer, i: int, ce):
    """Per-example loss of task i whose value is `ce` and whose gradient is w_i * grad(ce). Records the task's
    batch loss; the call that completes a step's set of losses (whichever task Keras computes last) updates xi."""
    mine = ops.arange(len(layer.tasks)) == i
    level = _replica_mean(ops.cast(ops.stop_gradient(ops.mean(ce)), "float32")) + EPSILON
    last = ops.where(mine, level, layer.famo_last.value)
    fresh = ops.where(mine, 1.0, layer.famo_fresh.value)
    layer.famo_last.assign(last)
    weight = ops.cast(ops.stop_gradient(_gradient_weights(layer, last)[i]), ce.dtype)
    ready = ops.all(fresh > 0)
    _update(layer, last, ready)
    layer.famo_fresh.assign(ops.where(ready, 0.0, fresh))
    return ce * weight + ops.stop_gradient(ce - ce * weight)  # logs the plain loss, descends the weighted


def _replica_mean(x):
    """The mean of `x` over the replicas of a tf.distribute strategy (`x` itself elsewhere): each replica sees
    its share of the batch, and weighing or stepping from its own share's loss made the replicas' logit steps
    disagree and cancel (half as far as one device after 5 steps of 4 images per replica). Equal shares: the
    mean of their means is the whole batch's mean loss, what one device sees. JAX's data parallelism computes
    the loss over the whole (sharded) batch already."""
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, x)


def _update(layer, losses, ready) -> None:
    """When `ready`, one FAMO step of the task logits from the losses at the last update to `losses` (Adam with
    L2 decay, as the reference code); the first one only records the losses."""
    lr, decay = layer.settings["famo_lr"], layer.settings["famo_decay"]
    steps = layer.famo_steps.value
    started = ops.logical_and(ready, steps > 0)
    xi = layer.famo_logits.value
    z = ops.softmax(xi)
    delta = ops.log(layer.famo_prev.value + EPSILON) - ops.log(losses + EPSILON)
    grad = z * (delta - ops.sum(z * delta)) + decay * xi  # J_softmax^T delta + L2
    m = 0.9 * layer.famo_m.value + 0.1 * grad
    v = 0.999 * layer.famo_v.value + 0.001 * grad * grad
    t = ops.maximum(steps, 1.0)
    step = lr * (m / (1.0 - 0.9 ** t)) / (ops.sqrt(v / (1.0 - 0.999 ** t)) + 1e-8)
    layer.famo_logits.assign(ops.where(started, xi - step, xi))
    layer.famo_m.assign(ops.where(started, m, layer.famo_m.value))
    layer.famo_v.assign(ops.where(started, v, layer.famo_v.value))
    layer.famo_prev.assign(ops.where(ready, losses, layer.famo_prev.value))
    layer.famo_steps.assign(ops.where(ready, steps + 1.0, steps))


def weights(layer) -> np.ndarray:
    """z = softmax(xi), what history.csv logs (the gradient weights also divide by each task's loss)."""
    return ops.convert_to_numpy(ops.softmax(layer.famo_logits))


def gradient_weight(layer, i: int, level: float) -> float:
    last = np.array(ops.convert_to_numpy(layer.famo_last), dtype="float32")
    last[i] = np.float32(level) + np.float32(EPSILON)
    return float(ops.convert_to_numpy(_gradient_weights(layer, ops.convert_to_tensor(last)))[i])


def callbacks(layer) -> list:
    return []
