"""Auto-Lambda: task weights learnt by a one-step look-ahead (Liu et al.,
TMLR 2022)."""

from __future__ import annotations

from typing import ClassVar

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_PARAMETRIZATIONS = ("softmax", "raw")
#: Adam's constants for the weights (PyTorch's defaults, as both references).
_BETA_1, _BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-8


@register_strategy("auto_lambda", "autol")
class AutoLambda(LossWeighting):
    """Task weights chosen for the held-out loss after one virtual step.

    Notation: theta the model's trainable parameters, eta the optimizer's
    current learning rate, L_t(theta; B) task t's loss on batch B, w(a) the
    task weights from the strategy's parameters a, p the outer weights (1
    on the primary tasks, 0 on auxiliary ones; every task by default). The
    model cuts each batch into a training half B_in and a held-out half
    B_out (`batches_per_step = 2`, `lookahead = True`) and, each step:

        theta' = theta - eta grad_theta sum_t w_t L_t(theta; B_in)
        d      = grad_theta' sum_t p_t L_t(theta'; B_out)
        eps    = 0.01 / ||d||
        h      = [grad_a sum_t w_t L_t(theta + eps d; B_in)
                  - grad_a sum_t w_t L_t(theta - eps d; B_in)] / (2 eps)
        a     <- Adam(a, gradient -eta h, learning_rate)
        update:  grad_theta sum_t w(a)_t L_t(theta; B) on the whole batch

    -eta h is the DARTS central finite difference of grad_a of the held-out
    loss after the virtual step (exact for quadratic losses): since
    grad_a sum_t w_t L_t = J_w^T L with J_w the Jacobian of w, h ~ J_w^T
    [<grad L_t(theta; B_in), d>]_t, so a task whose training gradient
    aligns with the held-out descent direction gains weight.

    Parametrizations (`weights=`):
    - "softmax" (default, LibMTL's trainer): w = softmax(a), a = 1/T at
      first (uniform weights); sum_t w_t = 1, so the objective has the
      scale of a MEAN of the task losses; outer learning rate 1e-3.
    - "raw" (the authors' code): w = a, unconstrained, a = `initial`
      (0.1, the authors' default) at first; learning rate 1e-4 there
      (NYUv2; 3e-5 Cityscapes, 3e-4 CIFAR-100).

    The look-ahead uses only the strategy's calls `lookahead_weights`,
    `outer_weights` and `update_from_lookahead`; `call` returns the
    weighted sum with the current weights (constants for the model update),
    so the strategy is also usable without a model as a plain weighting.

    Properties: stateful (a and its Adam moments, per task; a step count);
    per step about four extra forward and two extra backward passes on
    half batches; the weights do not depend on the step's own losses. No
    missing labels, no `rep_grad`, no task sampling.

    Args:
        weights: "softmax" or "raw", see above.
        learning_rate: the Adam learning rate of a (default 1e-3, LibMTL's
            `outer_lr`; pass 1e-4 with "raw" for the authors' NYUv2 runs).
        initial: the initial value of every entry of a (None: 1/T for
            "softmax", 0.1 for "raw").
        primary_tasks: None (the held-out loss sums every task, LibMTL and
            the authors' multi-task setting) or the names of the primary
            tasks (the authors' auxiliary-learning setting: the others are
            auxiliary and only helped to the extent they help these).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.auto_lambda import AutoLambda
    >>> strategy = AutoLambda(weights="raw", learning_rate=0.01)
    >>> strategy.build((2,))
    >>> strategy.update_from_lookahead(
    ...     keras.ops.convert_to_tensor([1.0, 2.0]),   # losses at theta + eps d
    ...     keras.ops.convert_to_tensor([1.2, 1.9]),   # losses at theta - eps d
    ...     epsilon=0.1, learning_rate=0.5)
    >>> [round(float(v), 4) for v in strategy.task_weights()]  # Adam: +-0.01
    [0.09, 0.11]

    References:
        Shikun Liu, Stephen James, Andrew J. Davison, Edward Johns.
        "Auto-Lambda: Disentangling Dynamic Task Relationships".
        Transactions on Machine Learning Research (TMLR), 2022.
        arXiv:2202.03091. Code: lorenmt/auto-lambda (`auto_lambda.py`,
        commit 0fc8431); LibMTL (median-research-group/LibMTL
        `LibMTL/trainer.py`, its bilevel Auto-Lambda step).

    Note:
        Batches: LibMTL draws the inner and outer batches from a loader of
        half the batch size and updates with a third, full-size batch; the
        authors take the outer batch from a second loader over the training
        set and update with the inner one. Here both halves come from the
        `fit` batch and the update uses the whole batch, so every sample
        trains the model. The virtual step is plain SGD with the optimizer's
        current learning rate, whatever the optimizer (LibMTL); the
        authors' code adds SGD's momentum and weight decay. The look-ahead
        passes run in training mode but leave BatchNorm statistics as they
        were (in both references they move them four more times per step).

        Neither reference can run here (LibMTL's trainer needs torchvision,
        the authors' code its data sets). The whole step is checked against
        a NumPy re-implementation of LibMTL's algorithm (and of the raw
        parametrization and primary tasks) on a two-task MLP:
        `tests/models/test_lookahead_path.py`, to 1e-5 on TensorFlow (graph
        mode; the contract table holds XLA to it) and JAX.
    """

    stateful = True
    lookahead: ClassVar[bool] = True
    batches_per_step: ClassVar[int] = 2

    def __init__(
        self,
        weights="softmax",
        learning_rate=1e-3,
        initial=None,
        primary_tasks=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if weights not in _PARAMETRIZATIONS:
            raise ValueError(
                f"AutoLambda `weights` must be one of {_PARAMETRIZATIONS}, "
                f"got {weights!r}."
            )
        learning_rate = as_float(
            learning_rate, "learning_rate", "AutoLambda", allow_bool=False
        )
        if not 0.0 < learning_rate < float("inf"):
            raise ValueError(
                "AutoLambda `learning_rate` must be a positive number, got "
                f"{learning_rate!r}."
            )
        if initial is not None:
            initial = as_float(initial, "initial", "AutoLambda", allow_bool=False)
            if initial != initial or abs(initial) == float("inf"):
                raise ValueError(
                    f"AutoLambda `initial` must be a finite number, got {initial!r}."
                )
        if primary_tasks is not None:
            if isinstance(primary_tasks, str) or not all(
                isinstance(t, str) for t in primary_tasks
            ):
                raise ValueError(
                    "AutoLambda `primary_tasks` must be None or a list of task "
                    f"names, got {primary_tasks!r}."
                )
            primary_tasks = list(primary_tasks)
            if not primary_tasks:
                raise ValueError("AutoLambda `primary_tasks` must name a task.")
        self.weights_mode = weights
        self.learning_rate = learning_rate
        self.initial = initial
        self.primary_tasks = primary_tasks

    # --- State ------------------------------------------------------------

    def set_task_names(self, task_names):
        super().set_task_names(task_names)
        unknown = sorted(set(self.primary_tasks or ()) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"AutoLambda `primary_tasks` names {unknown}, which are not "
                f"tasks of the model {list(self.task_names)}."
            )

    def _initial_value(self):
        if self.initial is not None:
            return self.initial
        return 1.0 / self.num_tasks if self.weights_mode == "softmax" else 0.1

    def build(self, input_shape):
        super().build(input_shape)
        for name in ("parameters", "first_moment", "second_moment"):
            setattr(
                self,
                name,
                self.add_weight(
                    shape=(self.num_tasks,),
                    initializer="zeros",
                    trainable=False,
                    name=name,
                    task_axis=0,
                ),
            )
        self.adam_steps = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="adam_steps"
        )
        self.reset_state()

    def reset_state(self):
        self.parameters.assign(
            ops.full((self.num_tasks,), self._initial_value(), self.parameters.dtype)
        )
        for variable in (self.first_moment, self.second_moment, self.adam_steps):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    # --- Weights ----------------------------------------------------------

    def _weights_of(self, parameters):
        if self.weights_mode == "softmax":
            return ops.softmax(parameters)
        return parameters

    def task_weights(self):
        """The current `(T,)` task weights w(a)."""
        return self._weights_of(ops.stop_gradient(self.parameters.value))

    def lookahead_weights(self):
        """The weights of the virtual step (the current ones)."""
        return self.task_weights()

    def outer_weights(self):
        """p, the `(T,)` weights of the held-out loss: 1 on primary tasks."""
        if self.primary_tasks is None:
            return ops.ones((self.num_tasks,), self.compute_dtype)
        return ops.convert_to_tensor(
            [1.0 if t in self.primary_tasks else 0.0 for t in self.task_names],
            self.compute_dtype,
        )

    def compute_weights(self, losses, training=True, task_mask=None):
        return ops.cast(self.task_weights(), losses.dtype)

    def weight_gradient(self, losses):
        """grad_a sum_t w(a)_t L_t: L (raw), or (diag(w) - w w^T) L
        (softmax)."""
        losses = ops.cast(losses, self.parameters.dtype)
        if self.weights_mode == "raw":
            return losses
        weights = self.task_weights()
        return weights * (losses - ops.sum(weights * losses))

    def update_from_lookahead(
        self, losses_plus, losses_minus, epsilon, learning_rate, training=True
    ):
        """One Adam step of a on -eta h (see the class docstring).

        Args:
            losses_plus, losses_minus: `(T,)` training losses at theta + eps
                d and theta - eps d.
            epsilon: eps (0 when d = 0: no update).
            learning_rate: eta, the model optimizer's learning rate.
            training: whether to store the step.

        A step without a direction (eps = 0) or whose h is not finite
        changes nothing, Adam's moments and step count included.
        """
        dtype = self.parameters.dtype
        epsilon = ops.cast(epsilon, dtype)
        difference = self.weight_gradient(losses_plus) - self.weight_gradient(
            losses_minus
        )
        safe = ops.where(epsilon > 0, epsilon, ops.ones_like(epsilon))
        hessian = ops.where(epsilon > 0, difference / (2.0 * safe), 0.0 * difference)
        gradient = -ops.cast(learning_rate, dtype) * hessian
        steps = self.adam_steps.value + 1.0
        first = _BETA_1 * self.first_moment.value + (1.0 - _BETA_1) * gradient
        second = _BETA_2 * self.second_moment.value + (1.0 - _BETA_2) * ops.square(
            gradient
        )
        corrected_first = first / (1.0 - ops.power(_BETA_1, steps))
        corrected_second = second / (1.0 - ops.power(_BETA_2, steps))
        parameters = self.parameters.value - self.learning_rate * corrected_first / (
            ops.sqrt(corrected_second) + _ADAM_EPSILON
        )
        if not training:
            return
        finite = ops.logical_and(ops.all(ops.isfinite(gradient)), epsilon > 0)
        for variable, value in (
            (self.parameters, parameters),
            (self.first_moment, first),
            (self.second_moment, second),
            (self.adam_steps, steps),
        ):
            variable.assign(ops.where(finite, ops.cast(value, dtype), variable.value))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weights": self.weights_mode,
                "learning_rate": self.learning_rate,
                "initial": self.initial,
                "primary_tasks": self.primary_tasks,
            }
        )
        return config
