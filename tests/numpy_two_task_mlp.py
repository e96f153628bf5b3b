"""The two-task MLP of `model_fixtures.two_task_mlp` in NumPy (float64).

Its forward pass, task losses and per-task gradients by hand, independent
of both backends, for tests that recompute a whole training step (the
multi-batch and look-ahead paths). Parameters are the list `[trunk kernel,
trunk bias, cls kernel, cls bias, reg kernel, reg bias]` (`params_of`).
"""

import keras
import numpy as np

LAYERS = ("trunk", "cls_head", "reg_head")


def params_of(model):
    """The model's parameters in this module's order, as float64 arrays."""
    return [
        np.asarray(keras.ops.convert_to_numpy(v), np.float64)
        for name in LAYERS
        for v in model.get_layer(name).weights
    ]


def losses_and_gradients(params, x, y):
    """`(losses, grads)` on one batch: the `(2,)` task losses (cls: sparse
    cross-entropy from logits; reg: mean squared error) and, per task, the
    gradients of its loss with respect to every parameter (zero for the
    other task's head), a list in `params` order."""
    kernel, bias, cls_kernel, cls_bias, reg_kernel, reg_bias = params
    n = x.shape[0]
    hidden = np.tanh(x @ kernel + bias)
    logits = hidden @ cls_kernel + cls_bias
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    labels = np.asarray(y["cls"]).astype(int)
    residual = hidden @ reg_kernel + reg_bias - np.asarray(y["reg"], np.float64)
    losses = np.array([-np.mean(log_probs[np.arange(n), labels]), np.mean(residual**2)])
    d_logits = (np.exp(log_probs) - np.eye(3)[labels]) / n
    d_reg = 2.0 * residual / n
    grads = []
    for t, (d_out, head_kernel) in enumerate(
        ((d_logits, cls_kernel), (d_reg, reg_kernel))
    ):
        d_pre = (d_out @ head_kernel.T) * (1.0 - hidden**2)
        task = [x.T @ d_pre, d_pre.sum(axis=0)]
        heads = [np.zeros_like(p) for p in params[2:]]
        heads[2 * t] = hidden.T @ d_out
        heads[2 * t + 1] = d_out.sum(axis=0)
        grads.append(task + heads)
    return losses, grads


def project_onto_simplex(y):
    """Euclidean projection onto the simplex (sort-based)."""
    u = np.sort(y)[::-1]
    taus = (np.cumsum(u)[:-1] - 1.0) / np.arange(1, len(y))
    hits = np.nonzero(taus > u[1:])[0]
    tau = taus[hits[0]] if len(hits) else (np.sum(y) - 1.0) / len(y)
    return np.maximum(y - tau, 0.0)
