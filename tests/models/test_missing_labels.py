"""MultiTaskModel with missing labels: `compile(missing_labels=...)`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

import keras_mtl
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.loss_weighting import LossWeighting


class PerTaskCounter(LossWeighting):
    """Test-only: counts, per task, the steps it saw, and learns a per-task
    scale (trainable); weights 1. Its state moves for every task it is told
    about, so the model's restore of absent tasks is what keeps them."""

    supports_missing_tasks = True
    stateful = True

    def build(self, input_shape):
        super().build(input_shape)
        self.seen = self.add_weight(
            shape=(self.num_tasks,),
            initializer="zeros",
            trainable=False,
            name="seen",
            task_axis=0,
        )
        self.scale = self.add_weight(
            shape=(self.num_tasks,),
            initializer="zeros",
            trainable=True,
            name="scale",
            task_axis=0,
        )
        self.steps = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="steps"
        )

    def call(self, losses, training=True, task_mask=None):
        if training:
            self.seen.assign(self.seen + 1.0)
            self.steps.assign(self.steps + 1.0)
        # The scale gets a gradient for every task, absent or not.
        objective = ops.sum(losses) + ops.sum((self.scale - 1.0) ** 2)
        return objective, ops.ones_like(losses)

    def reset_state(self):
        self.seen.assign(ops.zeros_like(self.seen))
        self.steps.assign(0.0)


class RecordingSum(GradientAggregation):
    """Test-only gradient method: the sum of the rows; records the mask and
    the row norms it was given."""

    supports_missing_tasks = True
    stateful = True

    def build(self, input_shape):
        super().build(input_shape)
        self.last_mask = self.add_weight(
            shape=(self.num_tasks,),
            initializer="ones",
            trainable=False,
            name="last_mask",
        )
        self.row_norms = self.add_weight(
            shape=(self.num_tasks,),
            initializer="zeros",
            trainable=False,
            name="row_norms",
        )

    def call(self, grads, losses=None, training=True, task_mask=None):
        if task_mask is not None and training:
            self.last_mask.assign(task_mask)
        if training:
            self.row_norms.assign(ops.sqrt(ops.sum(grads * grads, axis=1)))
        return ops.sum(grads, axis=0), ops.ones((grads.shape[0],))

    def reset_state(self):
        pass


CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _masked_data(n=32, seed=0):
    x, y = two_task_data(n=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    y["cls"] = y["cls"].copy()
    y["reg"] = y["reg"].copy()
    y["cls"][rng.random(n) < 0.4] = -1
    y["reg"][rng.random(n) < 0.3] = np.nan
    return x, y


def _compiled(loss_weighting="ew", missing=None, optimizer=None, jit=False, **kw):
    if missing is None:
        missing = {"cls": -1, "reg": float("nan")}
    model = two_task_mlp()
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss=TWO_TASK_LOSSES,
        loss_weighting=loss_weighting,
        missing_labels=missing,
        jit_compile=jit,
        **kw,
    )
    return model


def _reference_losses(model, x, y):
    """Task losses over the labelled samples only, computed independently."""
    pred = model(x, training=False)
    cls_keep = y["cls"] >= 0
    reg_keep = ~np.isnan(y["reg"][:, 0])
    cls = CE(y["cls"][cls_keep], ops.convert_to_numpy(pred["cls"])[cls_keep])
    reg_err = ops.convert_to_numpy(pred["reg"])[reg_keep, 0] - y["reg"][reg_keep, 0]
    return float(cls), float(np.mean(reg_err**2))


def test_evaluate_averages_each_task_over_its_labelled_samples():
    x, y = _masked_data()
    model = _compiled(metrics={"cls": ["accuracy"]})
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    cls, reg = _reference_losses(model, x, y)
    np.testing.assert_allclose(result["cls_loss"], cls, rtol=1e-5)
    np.testing.assert_allclose(result["reg_loss"], reg, rtol=1e-5)
    keep = y["cls"] >= 0
    predicted = np.argmax(ops.convert_to_numpy(model(x)["cls"]), axis=-1)
    accuracy = np.mean(predicted[keep] == y["cls"][keep])
    np.testing.assert_allclose(result["cls_accuracy"], accuracy, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_one_sgd_step_equals_the_step_on_labelled_samples_only(jit):
    x, y = _masked_data()
    model = _compiled(jit=jit)
    reference = two_task_mlp()
    reference.set_weights(model.get_weights())
    cls_keep = y["cls"] >= 0
    reg_keep = ~np.isnan(y["reg"][:, 0])
    with tf.GradientTape() as tape:
        pred = reference(x, training=True)
        cls = CE(y["cls"][cls_keep], tf.boolean_mask(pred["cls"], cls_keep))
        reg = tf.reduce_mean(
            (tf.boolean_mask(pred["reg"], reg_keep) - y["reg"][reg_keep]) ** 2
        )
        total = cls + reg
    grads = tape.gradient(total, reference.trainable_variables)
    for variable, grad in zip(reference.trainable_variables, grads):
        variable.assign(variable - 0.1 * grad)
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["cls_loss"][0], float(cls), rtol=1e-5)
    np.testing.assert_allclose(history.history["reg_loss"][0], float(reg), rtol=1e-5)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("jit", [False, True])
def test_absent_task_has_zero_loss_no_gradient_and_untouched_state(jit):
    x, y = two_task_data(n=16)
    y["cls"] = np.full_like(y["cls"], -1)  # no label for "cls" in the batch
    model = _compiled(PerTaskCounter(), jit=jit)
    head_before = [v.numpy() for v in model.task_variables["cls"]]
    strategy = model.loss_weighting
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert history.history["cls_loss"][0] == 0.0
    # No gradient reaches the absent task's head (plain SGD).
    for before, variable in zip(head_before, model.task_variables["cls"]):
        np.testing.assert_array_equal(variable.numpy(), before)
    # Its per-task state, trainable included, is untouched; the present
    # task's state and the shared counter moved.
    np.testing.assert_array_equal(strategy.seen.numpy(), [0.0, 1.0])
    scale = strategy.scale.numpy()
    assert scale[0] == 0.0 and scale[1] != 0.0
    assert strategy.steps.numpy() == 1.0
    # The weight log averages over the steps in which the task was present.
    assert history.history["reg_weight"][0] == 1.0


def test_absent_task_state_stays_under_momentum_optimizer():
    """Adam moves a variable with zero gradient through its moments; the
    absent task's trainable strategy state must still stay put."""
    x, y = two_task_data(n=16)
    model = _compiled(PerTaskCounter(), optimizer=keras.optimizers.Adam(0.1))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # both present
    scale = model.loss_weighting.scale.numpy().copy()
    y["cls"] = np.full_like(y["cls"], -1)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = model.loss_weighting.scale.numpy()
    assert after[0] == scale[0]
    assert after[1] != scale[1]


def test_absent_task_gives_its_own_strategy_variable_no_gradient():
    """Hybrid IMTL trains its loss scales s_t through `transform_losses`,
    which the model tells which tasks are present: an absent task's term
    e^s L - s is left out, so Adam never sees a gradient for its s_t (its
    first moment stays exactly 0), while the present task's s_t moves."""
    x, y = two_task_data(n=16)
    y["reg"] = np.full_like(y["reg"], np.nan)
    strategy = keras_mtl.weighting.get(
        {"class_name": "imtl", "config": {"loss_scaling": True}}
    )
    model = _compiled(strategy, optimizer=keras.optimizers.Adam(0.1))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    scales = strategy.loss_scales
    momentum = model.optimizer._momentums[model.optimizer._get_variable_index(scales)]
    assert momentum.numpy()[1] == 0.0
    assert momentum.numpy()[0] != 0.0
    assert scales.numpy()[1] == 0.0 and scales.numpy()[0] != 0.0


def test_gradient_methods_get_the_mask_and_a_zero_row_for_absent_tasks():
    x, y = two_task_data(n=16)
    y["reg"] = np.full_like(y["reg"], np.nan)
    model = _compiled(RecordingSum())
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    strategy = model.loss_weighting
    np.testing.assert_array_equal(strategy.last_mask.numpy(), [1.0, 0.0])
    norms = strategy.row_norms.numpy()
    assert norms[0] > 0.0 and norms[1] == 0.0


def test_sample_weight_mode_masks_with_zero_weights():
    x, y = two_task_data(n=32)
    weights = {
        "cls": (np.arange(32) % 3 != 0).astype("float32"),
        "reg": np.ones(32, "float32"),
    }
    model = _compiled(missing={"cls": "sample_weight"})
    result = model.evaluate(
        x, y, sample_weight=weights, batch_size=32, verbose=0, return_dict=True
    )
    keep = weights["cls"] > 0
    pred = model(x)["cls"]
    expected = CE(y["cls"][keep], ops.convert_to_numpy(pred)[keep])
    np.testing.assert_allclose(result["cls_loss"], float(expected), rtol=1e-5)


def test_integer_labels_of_dense_outputs_are_masked_per_position():
    inputs = keras.Input((4, 4, 2))
    shared = keras.layers.Conv2D(4, 1, name="trunk")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "seg": keras.layers.Conv2D(3, 1, name="seg")(shared),
            "depth": keras.layers.Conv2D(1, 1, name="depth")(shared),
        },
    )
    model.compile(
        optimizer="sgd",
        loss={"seg": CE, "depth": "mae"},
        missing_labels={"seg": 255},
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    seg = rng.integers(0, 3, size=(2, 4, 4)).astype("int32")
    seg[:, :2] = 255
    depth = rng.normal(size=(2, 4, 4, 1)).astype("float32")
    result = model.evaluate(
        x, {"seg": seg, "depth": depth}, verbose=0, return_dict=True
    )
    logits = ops.convert_to_numpy(model(x)["seg"])
    keep = seg != 255
    expected = CE(seg[keep], logits[keep])
    np.testing.assert_allclose(result["seg_loss"], float(expected), rtol=1e-5)


def test_without_missing_labels_nothing_changes():
    x, y = two_task_data(n=32)
    plain = two_task_mlp()
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=TWO_TASK_LOSSES)
    masked = _compiled()
    masked.set_weights(plain.get_weights())
    plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    masked.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), masked.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_save_and_load_keep_the_missing_labels_setting(tmp_path):
    x, y = _masked_data()
    model = _compiled()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "masked.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    expected = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["cls_loss"], expected["cls_loss"], rtol=1e-6)
    np.testing.assert_allclose(got["reg_loss"], expected["reg_loss"], rtol=1e-6)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"nope": -1}, "unknown tasks ['nope']"),
        ({"cls": "absent"}, "task 'cls'"),
        ({"cls": True}, "task 'cls'"),
        ([1, 2], "must be a number"),
    ],
)
def test_bad_missing_labels_arguments_name_the_culprit(missing, message):
    model = two_task_mlp()
    with pytest.raises(
        ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        model.compile(optimizer="sgd", loss=TWO_TASK_LOSSES, missing_labels=missing)


def test_strategies_without_support_are_refused_with_the_list_of_those_with():
    class NoSupport(LossWeighting):
        def compute_weights(self, losses, training=True):
            return ops.ones_like(losses)

    model = two_task_mlp()
    with pytest.raises(ValueError, match=r"does not support missing_labels.*'ew'"):
        model.compile(
            optimizer="sgd",
            loss=TWO_TASK_LOSSES,
            loss_weighting=NoSupport(),
            missing_labels=-1,
        )


def test_nan_sentinel_on_integer_labels_is_an_error_naming_the_task():
    x, y = two_task_data(n=8)
    model = _compiled(missing={"cls": float("nan")})
    with pytest.raises(ValueError, match="task 'cls'.*cannot hold NaN"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
