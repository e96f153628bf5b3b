"""GradNorm: gradient normalisation (Chen, Badrinarayanan, Lee, Rabinovich, 2018)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
from keras_mtl.weighting._task_state_ops import (
    add_task_vector,
    assign_ones,
    assign_zeros,
    present_or_all,
)
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_INITIAL_LOSSES = ("first_step", "first_epoch")
_OPTIMIZERS = ("adam", "sgd")
_GRADIENTS_OF = ("last_layer", "all")
# torch.optim.Adam defaults, used by the authors' follow-up code (meta).
_BETA_1 = 0.9
_BETA_2 = 0.999
_ADAM_EPSILON = 1e-8
# Floor of a weight after a step, before the renormalisation: keeps w > 0.
_MIN_WEIGHT = 1e-6


@register_strategy("gradnorm", "grad_norm")
class GradNorm(LossWeighting):
    """Learns task weights that equalise the tasks' training rates.

    Notation: T tasks, L_t the current batch loss of task t, L_t(0) its
    initial loss, W the variables of the last shared layer, w_t the task
    weights (initialised to 1), n_t = ||grad_W L_t|| (the per-task gradient
    norms the model passes as `shared_grads`), and alpha the asymmetry.

        G_t      = ||grad_W (w_t L_t)|| = w_t n_t,     G_bar = mean_t G_t
        Ltilde_t = L_t / L_t(0),                       r_t = Ltilde_t / mean_j Ltilde_j
        Target_t = G_bar * r_t^alpha                   (a constant)
        L_grad   = sum_t |G_t - Target_t|

    Each training step, the model is trained on sum_t w_t L_t with w
    constant (the gradient of the model is not taken through w), then w
    takes one step of its own optimiser on L_grad and is renormalised so
    that the weights sum to T:

        dL_grad / dw_t = sign(G_t - Target_t) * n_t
        w <- step(w, dL_grad / dw),   w <- max(w, 1e-6),   w <- T w / sum(w).

    Because Target (mean(G) included) is a constant, the gradient has this
    closed form and no second-order pass is needed. A task that trains
    slower than the others (large r_t) gets a larger gradient-norm target,
    hence a larger weight; tasks whose gradients are larger get smaller
    weights, so on regression tasks with output scales sigma_t the weights
    end up much smaller for large-sigma tasks.

    Defaults and where they come from:

    - `alpha=1.5`: the paper's NYUv2 value and LibMTL's default; the paper
      and the SLAW authors' configs use 0.12 on the synthetic regression
      toy.
    - `weight_optimizer="adam"`, `weight_learning_rate=0.025`: the separate
      Adam optimiser (torch defaults beta = (0.9, 0.999), eps = 1e-8) of the
      authors' follow-up code (mtcrawshaw/meta, `GradNorm` in
      `meta/train/loss.py`, lr 0.025 in its configs). `"sgd"` is a plain
      gradient step w <- w - lr * dL_grad/dw, whose step size scales with
      the gradient norms.
    - `initial_loss="first_step"`: L(0) are the losses of the first
      training step (meta). `"first_epoch"`: LibMTL's choice: the strategy
      is equal weighting during the first epoch, L(0) is the mean training
      loss of that epoch (set by `on_epoch_end()`, which
      `MultiTaskModel.fit` calls), and GradNorm starts at the second epoch.
    - `gradients_of="last_layer"`: the paper's choice, the variables of the
      last shared layer (`MultiTaskModel.last_shared_variables`); `"all"`
      uses every shared variable (as LibMTL does).

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task (loss
    0, zero gradient row) gets weight 0 in the objective and all its state
    (w_t, L_t(0), the Adam moments and step count, the first-epoch mean and
    count, all kept per task) is untouched. L_t(0) is recorded per task
    (flags `recorded`): with "first_step", at the task's first present
    step; with "first_epoch", at the end of the first epoch in which the
    task was present, as the mean of its losses over the steps where it was
    present. The weight update runs over the tasks that are present and
    have their L(0) (the others keep their weight, 1 until then): G_bar,
    mean_j Ltilde_j and the targets are over those K tasks only, which is
    GradNorm on those tasks alone, except for the renormalisation: the K
    updated weights keep their sum (sum_{j present} w_j), so all the
    weights keep summing to T, instead of being renormalised to sum to K
    (with weights learnt over all T tasks, that would rescale the present
    tasks against the absent ones at every partial step). The updated
    weights are thus those of GradNorm on the K tasks alone up to one
    positive factor.

    Properties: stateful (w, L(0), the optimiser's moments); needs per-task
    gradients of the chosen shared variables (T extra backward passes
    through them, cheap for the last layer); weights sum to T; after w has
    converged it adapts to a rescaling of a task's loss (w_t ~ 1 / scale).

    Args:
        alpha: asymmetry (restoring force) >= 0. Default 1.5.
        weight_learning_rate: learning rate of the weights' optimiser, > 0.
            Default 0.025.
        weight_optimizer: `"adam"` (default) or `"sgd"`.
        initial_loss: `"first_step"` (default) or `"first_epoch"`.
        gradients_of: `"last_layer"` (default) or `"all"`; sets the
            instance's `shared_gradients`, which tells the model which
            per-task gradients to pass.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.grad_norm import GradNorm
    >>> gradnorm = GradNorm()
    >>> losses = keras.ops.convert_to_tensor([1.0, 4.0])
    >>> grads = keras.ops.convert_to_tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> _, used = gradnorm(losses, shared_grads=grads)  # norms 5 and 1
    >>> keras.ops.convert_to_numpy(used).tolist()  # the weights of this step
    [1.0, 1.0]
    >>> [round(float(x), 3) for x in gradnorm.loss_weights.numpy()]  # next step
    [0.975, 1.025]

    References:
        Zhao Chen, Vijay Badrinarayanan, Chen-Yu Lee, Andrew Rabinovich.
        "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
        Deep Multitask Networks". ICML 2018. arXiv:1711.02257. No official
        code; reference implementations read: mtcrawshaw/meta (branch
        slaw, `meta/train/loss.py`) and median-research-group/LibMTL
        (`LibMTL/weighting/GradNorm.py`).

    Note:
        Order of operations: as in the paper's Algorithm 1 and LibMTL, the
        weights returned (and used for this step's model update) are those
        before this step's update of w; meta updates w first and uses the
        new weights at once (a one-step lag). Both references detach
        Target, mean(G) included, as done here. Differences from LibMTL:
        it parameterises w = T softmax(xi) and trains xi with the model's
        own optimiser and learning rate, and it takes the gradients of all
        shared variables; here w is updated directly (meta, the paper).
        The floor 1e-6 on w is ours (neither reference keeps w > 0; a
        negative w would flip a task's gradient). A step whose new weights
        are not finite leaves w unchanged; losses or L(0) equal to zero
        give a neutral ratio r_t = 1.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(
        self,
        alpha=1.5,
        weight_learning_rate=0.025,
        weight_optimizer="adam",
        initial_loss="first_step",
        gradients_of="last_layer",
        **kwargs,
    ):
        super().__init__(**kwargs)
        alpha = _as_float(alpha, "alpha")
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(
                f"GradNorm `alpha` must be a finite number >= 0, got {alpha!r}."
            )
        weight_learning_rate = _as_float(weight_learning_rate, "weight_learning_rate")
        if not (weight_learning_rate > 0 and math.isfinite(weight_learning_rate)):
            raise ValueError(
                "GradNorm `weight_learning_rate` must be a finite number > 0, "
                f"got {weight_learning_rate!r}."
            )
        if weight_optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"GradNorm `weight_optimizer` must be one of {_OPTIMIZERS}, "
                f"got {weight_optimizer!r}."
            )
        if initial_loss not in _INITIAL_LOSSES:
            raise ValueError(
                f"GradNorm `initial_loss` must be one of {_INITIAL_LOSSES}, "
                f"got {initial_loss!r}."
            )
        if gradients_of not in _GRADIENTS_OF:
            raise ValueError(
                f"GradNorm `gradients_of` must be one of {_GRADIENTS_OF}, "
                f"got {gradients_of!r}."
            )
        self.alpha = alpha
        self.weight_learning_rate = weight_learning_rate
        self.weight_optimizer = weight_optimizer
        self.initial_loss = initial_loss
        self.gradients_of = gradients_of
        #: Tells the model which per-task gradients to pass as `shared_grads`.
        self.shared_gradients = gradients_of

    def build(self, input_shape):
        super().build(input_shape)
        self.loss_weights = add_task_vector(self, "loss_weights", initializer="ones")
        self.initial_losses = add_task_vector(self, "initial_losses")
        # 1.0 once the task's L(0) is known and it takes part in the updates.
        self.recorded = add_task_vector(self, "recorded")
        if self.initial_loss == "first_epoch":
            # Running mean of the task's losses over its first epoch and the
            # number of steps in it (per task: with missing tasks, the
            # steps where the task is present).
            self.epoch_mean = add_task_vector(self, "epoch_mean")
            self.epoch_steps = add_task_vector(self, "epoch_steps")
        if self.weight_optimizer == "adam":
            self.adam_m = add_task_vector(self, "adam_m")
            self.adam_v = add_task_vector(self, "adam_v")
            # Adam's step count of each weight (its bias corrections).
            self.adam_steps = add_task_vector(self, "adam_steps")

    @property
    def active(self):
        """1.0 once every task's L(0) is known (GradNorm runs on all)."""
        return ops.min(self.recorded.value)

    def weight_gradient(self, losses, grad_norms, initial_losses, task_mask=None):
        """dL_grad/dw at the current weights (Target held constant).

        Args:
            losses: `(T,)` current task losses.
            grad_norms: `(T,)` norms n_t of the unweighted task gradients.
            initial_losses: `(T,)` the losses L(0).
            task_mask: None, or `(T,)`, nonzero for the tasks taking part
                (the means run over them; the others get gradient 0).

        Returns:
            The `(T,)` gradient sign(w_t n_t - Target_t) * n_t.
        """
        weights = ops.convert_to_tensor(self.loss_weights.value)
        norms = weights * grad_norms
        ratio = ops.where(
            initial_losses > 0.0,
            losses / ops.where(initial_losses > 0.0, initial_losses, 1.0),
            1.0,
        )
        present = present_or_all(task_mask, self.num_tasks)
        ratio = ops.where(present, ratio, 1.0)
        mean_ratio = _present_mean(ratio, present)
        relative = ops.where(
            mean_ratio > 0.0, ratio / ops.where(mean_ratio > 0.0, mean_ratio, 1.0), 1.0
        )
        mean_norm = _present_mean(norms, present)
        target = mean_norm * ops.power(relative, self.alpha)
        gradient = ops.sign(norms - target) * grad_norms
        return ops.where(present, gradient, 0.0)

    def _step(self, gradient, taking_part):
        """New weights (and optimiser state) after one step on `gradient`,
        for the tasks `taking_part` (a `(T,)` boolean tensor)."""
        weights = ops.convert_to_tensor(self.loss_weights.value)
        if self.weight_optimizer == "sgd":
            new = weights - self.weight_learning_rate * gradient
            state = ()
        else:
            steps = self.adam_steps.value + ops.cast(taking_part, "float32")
            m = _BETA_1 * self.adam_m.value + (1.0 - _BETA_1) * gradient
            v = _BETA_2 * self.adam_v.value + (1.0 - _BETA_2) * ops.square(gradient)
            # 1 - beta^t written as -expm1(t log beta), exact in float32; t
            # at least 1 so that a task not taking part stays finite.
            t = ops.maximum(steps, 1.0)
            m_hat = m / -ops.expm1(t * math.log(_BETA_1))
            v_hat = v / -ops.expm1(t * math.log(_BETA_2))
            new = weights - self.weight_learning_rate * m_hat / (
                ops.sqrt(v_hat) + _ADAM_EPSILON
            )
            state = (m, v, steps)
        new = ops.maximum(new, _MIN_WEIGHT)
        # The tasks taking part keep the sum of their weights, so that all
        # the weights keep summing to T (T itself when all take part).
        kept = self.num_tasks - ops.sum(ops.where(taking_part, 0.0, weights))
        kept = ops.where(
            kept > 0.0, kept, ops.sum(ops.where(taking_part, weights, 0.0))
        )
        total = ops.sum(ops.where(taking_part, new, 0.0))
        new = ops.where(taking_part, kept * new / total, weights)
        return new, state

    def call(self, losses, shared_grads=None, training=True, task_mask=None):
        """Returns `(sum_t w_t L_t, w)` and, when training, updates w.

        Args:
            losses: `(T,)` task losses.
            shared_grads: `(T, P')` per-task gradients of the shared
                variables chosen by `gradients_of` (passed by the model).
            training: whether to update the weights and L(0).
            task_mask: None, or `(T,)` floats, 1.0 for the tasks present in
                the step (see `Strategy` and "Missing tasks" above).
        """
        self._check_num_tasks(losses)
        # A copy: in eager mode a read of the variable may share its buffer,
        # which the assign below would overwrite.
        weights = self.loss_weights.value * 1.0
        present = present_or_all(task_mask, self.num_tasks)
        used = ops.where(present, weights, 0.0)
        objective = ops.sum(ops.stop_gradient(ops.cast(used, losses.dtype)) * losses)
        if not training:
            return objective, ops.cast(used, losses.dtype)
        if shared_grads is None:
            raise ValueError(
                "GradNorm needs the per-task gradients `shared_grads` (a (T, P) "
                "tensor); MultiTaskModel passes them during training."
            )
        self._check_num_tasks(shared_grads, what="shared_grads")
        values = ops.cast(ops.stop_gradient(losses), "float32")
        grads = ops.cast(ops.stop_gradient(shared_grads), "float32")
        grad_norms = ops.sqrt(ops.sum(ops.square(grads), axis=1))
        absent = ops.logical_not(present)
        finite_losses = ops.all(ops.logical_or(ops.isfinite(values), absent))
        waiting = ops.logical_and(self.recorded.value < 0.5, present)

        if self.initial_loss == "first_step":
            # L(0) of each task: its losses at its first (finite) present step.
            record = ops.logical_and(waiting, finite_losses)
            initial = ops.where(record, values, self.initial_losses.value)
            recorded = ops.logical_or(self.recorded.value > 0.5, record)
            self.initial_losses.assign(initial)
            self.recorded.assign(ops.cast(recorded, "float32"))
        else:
            warming = ops.logical_and(waiting, finite_losses)
            steps = self.epoch_steps.value + ops.cast(warming, "float32")
            mean = self.epoch_mean.value + ops.where(
                warming, (values - self.epoch_mean.value) / ops.maximum(steps, 1.0), 0.0
            )
            self.epoch_mean.assign(mean)
            self.epoch_steps.assign(steps)
            initial = ops.convert_to_tensor(self.initial_losses.value)
            recorded = self.recorded.value > 0.5

        # GradNorm runs over the present tasks whose L(0) is known (without
        # a mask, all the tasks or none: they start together).
        taking_part = ops.logical_and(present, recorded)
        part_mask = ops.cast(taking_part, "float32")
        gradient = self.weight_gradient(values, grad_norms, initial, part_mask)
        new, state = self._step(gradient, taking_part)
        not_part = ops.logical_not(taking_part)
        update = ops.logical_and(
            ops.any(taking_part),
            ops.logical_and(
                ops.all(ops.logical_or(ops.isfinite(new), not_part)),
                ops.all(ops.logical_or(ops.isfinite(gradient), not_part)),
            ),
        )
        update = ops.logical_and(update, taking_part)
        self.loss_weights.assign(ops.where(update, new, weights))
        if state:
            for variable, value in zip(
                (self.adam_m, self.adam_v, self.adam_steps), state
            ):
                variable.assign(ops.where(update, value, variable.value))
        return objective, ops.cast(used, losses.dtype)

    def on_epoch_end(self):
        """With `initial_loss="first_epoch"`, fixes L(0) of the tasks seen
        in their first epoch to their mean loss in it and switches GradNorm
        on for them."""
        if not self.built or self.initial_loss != "first_epoch":
            return
        start = ops.logical_and(self.recorded.value < 0.5, self.epoch_steps.value > 0.0)
        self.initial_losses.assign(
            ops.where(start, self.epoch_mean.value, self.initial_losses.value)
        )
        self.recorded.assign(ops.where(start, 1.0, self.recorded.value))

    def reset_state(self):
        if not self.built:
            return
        assign_ones(self.loss_weights)
        for variable in self.non_trainable_weights:
            if variable is not self.loss_weights:
                assign_zeros(variable)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "weight_learning_rate": self.weight_learning_rate,
                "weight_optimizer": self.weight_optimizer,
                "initial_loss": self.initial_loss,
                "gradients_of": self.gradients_of,
            }
        )
        return config


def _present_mean(values, present):
    """The mean of `values` over the `present` entries (0 if none)."""
    count = ops.sum(ops.cast(present, values.dtype))
    return ops.sum(ops.where(present, values, 0.0)) / ops.maximum(count, 1.0)


def _as_float(value, name):
    return as_float(value, name, "GradNorm", allow_bool=False)
