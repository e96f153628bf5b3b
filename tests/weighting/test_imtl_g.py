"""Tests of IMTL-G."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import numpy as np
import pytest
import tensorflow as tf
from backends import compiled, graph

import keras_mtl.weighting as weighting
from keras_mtl.weighting.imtl_g import IMTLG, imtl_g_weights, present_imtl_g_weights

# Strategy-level tests run on both backends; those with a gradient tape, or
# through the shared checks of `aggregator_properties` (which use
# TensorFlow), are TensorFlow-only.
both_backends = pytest.mark.both_backends


def _reference(grads):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/IMTL.py` (commit
    daa780e) at loss scale s = 0: alpha_{2:T} = g_1 U^T (D U^T)^{-1}."""
    grads = np.asarray(grads, np.float64)
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    d_mat = grads[:1] - grads[1:]
    u_mat = unit[:1] - unit[1:]
    rest = grads[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def _random_grads(rng, num, dim, common=0.0):
    grads = rng.normal(size=(num, dim)) * rng.uniform(0.3, 3.0, size=(num, 1))
    return (grads + common * rng.normal(size=(1, dim))).astype("float32")


def _projections(grads, update):
    grads = np.asarray(grads, np.float64)
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    return unit @ np.asarray(update, np.float64)


@both_backends
def test_registry_and_config_round_trip():
    assert isinstance(weighting.get("imtl"), IMTLG)
    assert isinstance(weighting.get("imtl_g"), IMTLG)
    original = IMTLG(rep_grad=True, name="imtl")
    rebuilt = IMTLG.from_config(original.get_config())
    assert rebuilt.get_config() == original.get_config() and rebuilt.rep_grad
    assert IMTLG.requires == "gramian" and IMTLG.supports_rep_grad


@both_backends
def test_two_task_hand_computed():
    # u = e1, e2; d = (a1, 2 a2) with d.u1 = d.u2 and a1 + a2 = 1.
    update, weights = IMTLG()(np.array([[1.0, 0.0], [0.0, 2.0]], "float32"))
    np.testing.assert_allclose(np.asarray(weights), [2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(update), [2 / 3, 2 / 3], rtol=1e-6)
    # A conflicting pair: g1 = (1, 0), g2 = (-1, 1) (u2 = (-1, 1)/sqrt 2).
    # d = (a1 - a2, a2), d.u1 = d.u2 gives a1 - a2 = (a2 - a1 + a2)/sqrt 2.
    update, weights = IMTLG()(np.array([[1.0, 0.0], [-1.0, 1.0]], "float32"))
    r = np.sqrt(2.0)
    a2 = (1 + 1 / r) / (2 + 3 / r)
    np.testing.assert_allclose(np.asarray(weights), [1 - a2, a2], rtol=1e-5)


@both_backends
@pytest.mark.parametrize("num", [2, 3, 4, 5])
def test_equal_projections_and_reference(num):
    rng = np.random.default_rng(num)
    for trial in range(4):
        grads = _random_grads(rng, num, num + 3, common=1.0 if trial % 2 else 0.0)
        update, weights = IMTLG()(grads)
        w = np.asarray(weights).astype("float64")
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
        proj = _projections(grads, np.asarray(update))
        np.testing.assert_allclose(proj, proj[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w, _reference(grads), rtol=1e-3, atol=1e-4)


@both_backends
def test_direction_invariant_to_rescaling_a_task():
    rng = np.random.default_rng(7)
    grads = _random_grads(rng, 4, 6, common=1.0)
    update, weights = IMTLG()(grads)
    scaled = grads.copy()
    scaled[2] *= 1e3
    update_s, weights_s = IMTLG()(scaled)
    u, us = np.asarray(update).astype("float64"), np.asarray(update_s).astype("float64")
    # Same line; the sign can flip, since sum_t alpha_t = 1 fixes the scale
    # through the norms (the reference does the same).
    cosine = us @ u / (np.linalg.norm(us) * np.linalg.norm(u))
    np.testing.assert_allclose(abs(cosine), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights_s), _reference(scaled), rtol=1e-3, atol=1e-5
    )
    # alpha_k (relative to the others) is divided by the scale.
    ratio = np.asarray(weights_s) / np.asarray(weights)
    np.testing.assert_allclose(ratio[2] * 1e3 / ratio[0], 1.0, rtol=1e-3)


@both_backends
def test_permutation_equivariance():
    rng = np.random.default_rng(8)
    grads = _random_grads(rng, 4, 6, common=1.0)
    perm = np.array([2, 0, 3, 1])
    update, weights = IMTLG()(grads)
    update_p, weights_p = IMTLG()(grads[perm])
    np.testing.assert_allclose(
        np.asarray(update_p), np.asarray(update), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(weights_p), np.asarray(weights)[perm], rtol=1e-4, atol=1e-5
    )


@both_backends
def test_identical_rows_give_the_mean():
    row = np.array([0.5, -1.0, 2.0], "float32")
    update, weights = IMTLG()(np.tile(row, (3, 1)))
    np.testing.assert_allclose(np.asarray(weights), [1 / 3] * 3, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(update), row, rtol=1e-5)


@both_backends
def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(9)
    g = _random_grads(rng, 4, 6)
    cases = [
        np.zeros((3, 5), "float32"),
        np.stack([g[0], g[1], g[0] + g[1]]),
        np.stack([g[0], 2.0 * g[0]]),
        np.stack([g[0], np.zeros_like(g[0]), g[1]]),
        g * 1e-10,
        g * 1e10,
        g * np.array([[1e-10], [1.0], [1e10], [1.0]], "float32"),
        _random_grads(rng, 5, 2),
    ]
    for grads in cases:
        update, weights = IMTLG()(grads)
        assert (
            np.isfinite(np.asarray(update)).all()
            and np.isfinite(np.asarray(weights)).all()
        )
    # A global scale leaves alpha unchanged.
    np.testing.assert_allclose(
        np.asarray(IMTLG()(g * 1e-10)[1]),
        np.asarray(IMTLG()(g)[1]),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(IMTLG()(g * 1e10)[1]),
        np.asarray(IMTLG()(g)[1]),
        rtol=1e-4,
        atol=1e-6,
    )
    # One task: its own gradient.
    np.testing.assert_allclose(np.asarray(IMTLG().aggregate(g[:1])), g[0], rtol=1e-6)


@both_backends
def test_eager_equals_xla():
    # The float32 Gramians of the two modes differ by rounding; IMTL-G's
    # linear system amplifies that a little.
    rng = np.random.default_rng(10)
    eager, xla = IMTLG(), IMTLG()
    xla.build((4, 7))
    step = compiled(xla, layers=[xla])
    for _ in range(2):
        grads = _random_grads(rng, 4, 7, common=1.0)
        u1, w1 = eager(grads)
        u2, w2 = step(grads)
        np.testing.assert_allclose(np.asarray(u2), np.asarray(u1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(w2), np.asarray(w1), rtol=1e-4, atol=1e-5)


# --- Hybrid IMTL: IMTL-G on the gradients of IMTL-L's scaled losses. ---


@both_backends
def test_loss_scaling_config_round_trip_and_validation():
    assert IMTLG().loss_scaling is False
    original = IMTLG(loss_scaling=True, rep_grad=True, name="hybrid")
    config = original.get_config()
    assert config["loss_scaling"] is True
    rebuilt = IMTLG.from_config(config)
    assert rebuilt.get_config() == config and rebuilt.loss_scaling
    assert IMTLG.from_config(IMTLG().get_config()).loss_scaling is False
    with pytest.raises(ValueError, match="loss_scaling"):
        IMTLG(loss_scaling="yes")


def test_without_loss_scaling_nothing_changes():
    rng = np.random.default_rng(11)
    grads = _random_grads(rng, 3, 5, common=1.0)
    losses = tf.constant([0.5, 2.0, 4.0])
    plain, explicit = IMTLG(), IMTLG(loss_scaling=False)
    explicit.build(grads.shape)
    assert explicit.weights == [] and not explicit.stateful
    # transform_losses is the identity (the same tensor).
    assert explicit.transform_losses(losses) is losses
    u1, w1 = plain(grads, losses)
    u2, w2 = explicit(grads, losses)
    np.testing.assert_array_equal(np.asarray(u2), np.asarray(u1))
    np.testing.assert_array_equal(np.asarray(w2), np.asarray(w1))


def test_loss_scaling_transform_values_and_scale_gradient():
    strategy = IMTLG(loss_scaling=True)
    strategy.build((3, 5))
    assert strategy.stateful
    assert [v.name for v in strategy.trainable_variables] == ["loss_scales"]
    np.testing.assert_array_equal(np.asarray(strategy.loss_scales), 0.0)
    losses = np.array([0.5, 2.0, 4.0], "float32")
    # At s = 0 the scaled losses are the losses.
    np.testing.assert_allclose(strategy.transform_losses(losses).numpy(), losses)
    s = np.array([0.3, -1.2, 0.7], "float32")
    strategy.loss_scales.assign(s)
    with tf.GradientTape() as tape:
        transformed = strategy.transform_losses(tf.constant(losses))
        total = tf.reduce_sum(transformed)
    s64, l64 = s.astype("float64"), losses.astype("float64")
    np.testing.assert_allclose(
        np.asarray(transformed), np.exp(s64) * l64 - s64, rtol=1e-6, atol=1e-7
    )
    # What the model's optimizer trains s with: exp(s) L - 1.
    (grad_s,) = tape.gradient(total, [strategy.loss_scales])
    np.testing.assert_allclose(np.asarray(grad_s), np.exp(s64) * l64 - 1.0, rtol=1e-6)


def test_loss_scaling_gradients_of_the_losses_are_scaled():
    # Per-task gradients of the scaled losses are exp(s_t) dL_t/dtheta.
    strategy = IMTLG(loss_scaling=True)
    strategy.build((2, 3))
    strategy.loss_scales.assign([np.log(2.0), -np.log(4.0)])
    theta = tf.Variable([1.0, -2.0, 0.5])
    with tf.GradientTape(persistent=True) as tape:
        losses = tf.stack([tf.reduce_sum(theta**2), tf.reduce_sum(3.0 * theta)])
        transformed = strategy.transform_losses(losses)
        parts = [transformed[0], transformed[1]]
    rows = [tape.gradient(p, theta).numpy() for p in parts]
    np.testing.assert_allclose(rows[0], 2.0 * 2.0 * np.asarray(theta), rtol=1e-6)
    np.testing.assert_allclose(rows[1], 0.25 * 3.0 * np.ones(3), rtol=1e-6)


def test_loss_scales_converge_to_unit_scaled_losses():
    # IMTL-L's fixed point: gradient descent on s with exp(s) L - 1 drives
    # the scaled losses exp(s_t) L_t to 1, i.e. s_t = -log L_t.
    strategy = IMTLG(loss_scaling=True)
    strategy.build((3, 4))
    losses = tf.constant([0.2, 1.0, 6.0])

    @tf.function
    def descend():
        for _ in tf.range(400):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(strategy.transform_losses(losses))
            grad = tape.gradient(total, strategy.loss_scales)
            strategy.loss_scales.assign_sub(0.1 * grad)

    descend()
    np.testing.assert_allclose(
        np.asarray(strategy.loss_scales),
        -np.log(np.asarray(losses)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_loss_scaling_leaves_the_aggregation_and_state_round_trip():
    rng = np.random.default_rng(12)
    grads = _random_grads(rng, 3, 6, common=1.0)
    losses = np.array([0.5, 2.0, 4.0], "float32")
    strategy = IMTLG(loss_scaling=True)
    strategy.build(grads.shape)
    strategy.loss_scales.assign([0.4, -0.3, 1.1])
    # IMTL-G on the rows it receives, whatever s is.
    u1, w1 = strategy(grads, losses)
    u2, w2 = IMTLG()(grads, losses)
    np.testing.assert_allclose(np.asarray(u1), np.asarray(u2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(w1), np.asarray(w2), rtol=1e-6, atol=1e-7)
    clone = IMTLG.from_config(strategy.get_config())
    clone.build(grads.shape)
    clone.set_weights(strategy.get_weights())
    np.testing.assert_array_equal(
        clone.transform_losses(losses).numpy(),
        strategy.transform_losses(losses).numpy(),
    )
    strategy.reset_state()
    np.testing.assert_array_equal(np.asarray(strategy.loss_scales), 0.0)
    np.testing.assert_allclose(strategy.transform_losses(losses).numpy(), losses)


def test_loss_scaling_builds_on_first_transform_and_checks_the_task_count():
    strategy = IMTLG(loss_scaling=True)
    transformed = strategy.transform_losses(tf.constant([1.0, 2.0]))
    assert strategy.built and strategy.num_tasks == 2
    np.testing.assert_allclose(np.asarray(transformed), [1.0, 2.0])
    with pytest.raises(ValueError, match="2 tasks"):
        strategy.transform_losses(tf.constant([1.0, 2.0, 3.0]))


def test_loss_scaling_transform_eager_equals_xla():
    strategy = IMTLG(loss_scaling=True)
    strategy.build((3, 4))
    strategy.loss_scales.assign([0.1, -0.5, 0.9])
    losses = tf.constant([0.7, 1.5, 3.0])
    step = tf.function(strategy.transform_losses, jit_compile=True)
    np.testing.assert_allclose(
        step(losses).numpy(), strategy.transform_losses(losses).numpy(), rtol=1e-6
    )


# --- Missing tasks ---------------------------------------------------------

_weights_fn = graph(imtl_g_weights)
_present_weights_fn = graph(present_imtl_g_weights)


def _with_absent(grads, absent):
    grads = grads.copy()
    mask = np.ones(len(grads), "float32")
    mask[list(absent)] = 0.0
    grads[list(absent)] = 0.0
    return grads, mask


def _hard_grads(rng, num, dim=8):
    scaled = _random_grads(rng, num, dim) * np.logspace(-3, 3, num)[:, None]
    dependent = _random_grads(rng, num, dim, common=1.0)
    dependent[-1] = 0.3 * dependent[0] - 0.7 * dependent[1] + 1e-3
    return [
        _random_grads(rng, num, dim),
        _random_grads(rng, num, dim, common=2.0),
        scaled.astype("float32"),
        dependent,
    ]


# TensorFlow only: bit for bit there; on JAX the masked and unmasked
# solvers differ by rounding (1 ulp of float32).
@pytest.mark.parametrize("loss_scaling", [False, True])
def test_missing_tasks_all_present_mask_equals_unmasked(loss_scaling):
    assert IMTLG.supports_missing_tasks
    rng = np.random.default_rng(80)
    for num in (2, 4):
        strategy = IMTLG(loss_scaling=loss_scaling)
        grads = _random_grads(rng, num, 6, common=1.0)
        u1, w1 = strategy(grads)
        u2, w2 = strategy(grads, task_mask=np.ones(num, "float32"))
        np.testing.assert_array_equal(np.asarray(u2), np.asarray(u1))
        np.testing.assert_array_equal(np.asarray(w2), np.asarray(w1))


@both_backends
@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 2, 4), (0, 1, 3, 4)])
def test_missing_tasks_equal_imtl_g_on_present_rows(absent):
    # K = 4, 3, 2 and 1 present tasks of 5.
    rng = np.random.default_rng(81 + len(absent))
    present = [t for t in range(5) if t not in absent]
    for full in _hard_grads(rng, 5):
        grads, mask = _with_absent(full, absent)
        update, weights = IMTLG()(grads, task_mask=mask)
        ref_update, ref_weights = IMTLG()(grads[present])
        np.testing.assert_array_equal(np.asarray(weights)[list(absent)], 0.0)
        # (The float32 Gramians of the T- and K-row matrices may differ
        # by rounding, which the linear system amplifies a little.)
        np.testing.assert_allclose(
            np.asarray(weights)[present], np.asarray(ref_weights), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(update), np.asarray(ref_update), rtol=1e-4, atol=1e-5
        )
    # Equal projections on the present directions only, against LibMTL's
    # formula on the present rows.
    grads, mask = _with_absent(_random_grads(rng, 5, 8, common=1.0), absent)
    update, weights = IMTLG()(grads, task_mask=mask)
    if len(present) > 1:
        np.testing.assert_allclose(
            np.asarray(weights)[present], _reference(grads[present]), rtol=1e-4
        )
        proj = _projections(grads[present], np.asarray(update))
        np.testing.assert_allclose(proj, proj[0], rtol=1e-4)
    else:
        np.testing.assert_array_equal(np.asarray(weights), mask)
        np.testing.assert_array_equal(np.asarray(update), grads[present[0]])


@pytest.mark.parametrize("num,absent", [(5, (2,)), (6, (0, 4)), (6, (1, 2, 3, 5))])
def test_missing_tasks_closed_form_equals_it_on_present_block(num, absent):
    # The float64 function: the padded system gives the K-task solution,
    # also for ill-conditioned and badly scaled Gramians. (TensorFlow only:
    # called outside `compute_weights`, JAX without x64 runs it in float32.)
    rng = np.random.default_rng(83)
    present = [t for t in range(num) if t not in absent]
    mask = np.isin(np.arange(num), present)
    for grads in _hard_grads(rng, len(present)):
        grads = grads.astype("float64")
        block = grads @ grads.T
        gramian = np.full((num, num), -2.0)  # dropped, whatever it holds
        gramian[np.ix_(present, present)] = block
        weights = np.asarray(_present_weights_fn(gramian, mask))
        ref = np.asarray(_weights_fn(block))
        np.testing.assert_array_equal(weights[~mask], 0.0)
        np.testing.assert_allclose(weights[present], ref, rtol=1e-8, atol=1e-10)


@both_backends
def test_missing_tasks_compute_weights_drops_nonzero_rows():
    rng = np.random.default_rng(84)
    grads = _random_grads(rng, 4, 6, common=1.0).astype("float64")
    mask = np.array([0.0, 1.0, 1.0, 1.0], "float32")
    present = [1, 2, 3]
    weights = np.asarray(
        IMTLG(rep_grad=True).compute_weights(
            (grads @ grads.T).astype("float32"), task_mask=mask
        )
    )
    ref = IMTLG(rep_grad=True).compute_weights(
        (grads[present] @ grads[present].T).astype("float32")
    )
    np.testing.assert_allclose(weights[present], np.asarray(ref), rtol=1e-6)
    assert weights[0] == 0.0


@both_backends
def test_missing_tasks_degenerate_inputs_finite():
    rng = np.random.default_rng(85)
    g = _random_grads(rng, 4, 6)
    cases = [
        (g * np.array([[1e10], [1.0], [1e-10], [1.0]], "float32"), [1, 0, 1, 1]),
        (np.zeros((4, 6), "float32"), [0, 0, 0, 0]),
        (np.zeros((4, 6), "float32"), [1, 0, 1, 1]),
        (g * 1e-10, [1, 1, 0, 1]),
        (np.stack([g[0], 2.0 * g[0], g[1], g[2]]), [1, 1, 0, 0]),
        (np.stack([g[0], np.zeros_like(g[0]), g[1], g[2]]), [1, 1, 0, 1]),
    ]
    for grads, mask in cases:
        mask = np.asarray(mask, "float32")
        update, weights = IMTLG()(grads * mask[:, None], task_mask=mask)
        assert (
            np.isfinite(np.asarray(update)).all()
            and np.isfinite(np.asarray(weights)).all()
        )
        np.testing.assert_array_equal(np.asarray(weights)[mask == 0], 0.0)
    _, weights = IMTLG()(np.zeros((3, 4), "float32"), task_mask=np.zeros(3, "float32"))
    np.testing.assert_array_equal(np.asarray(weights), 0.0)
    # One present task, even with a zero gradient: weight 1, as IMTL-G for
    # one task.
    for row in (g[2], np.zeros_like(g[2])):
        grads = np.zeros_like(g)
        grads[2] = row
        _, weights = IMTLG()(grads, task_mask=np.array([0.0, 0.0, 1.0, 0.0], "float32"))
        np.testing.assert_array_equal(np.asarray(weights), [0.0, 0.0, 1.0, 0.0])


@both_backends
def test_missing_tasks_eager_matches_xla():
    strategy = IMTLG()
    strategy.build((5, 7))

    def masked(grads, mask):
        return strategy(grads, task_mask=mask)

    masked = compiled(masked, layers=[strategy])
    rng = np.random.default_rng(86)
    for absent in [(0,), (2, 3), (0, 1, 4), (0, 1, 2, 3)]:
        grads, mask = _with_absent(_random_grads(rng, 5, 7, common=1.0), absent)
        eager_update, eager_weights = strategy(grads, task_mask=mask)
        update, weights = masked(grads, mask)
        np.testing.assert_allclose(
            np.asarray(update), np.asarray(eager_update), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            np.asarray(weights), np.asarray(eager_weights), rtol=1e-4, atol=1e-5
        )


def test_missing_tasks_loss_scales_are_per_task_state():
    # Hybrid IMTL: s is per-task; an absent task's term of the transformed
    # losses is 0 (no gradient for its s_t), and the model's restore puts
    # back whatever the optimizer did to it.
    strategy = IMTLG(loss_scaling=True)
    strategy.build((3, 4))
    assert [(v.path, axis) for v, axis in strategy.per_task_state()] == [
        (strategy.loss_scales.path, 0)
    ]
    strategy.loss_scales.assign([0.2, -0.4, 0.6])
    losses = tf.constant([0.5, 0.0, 3.0])
    mask = tf.constant([1.0, 0.0, 1.0])
    snapshot = strategy.task_state_snapshot()
    with tf.GradientTape(persistent=True) as tape:
        masked = strategy.transform_losses(losses, task_mask=mask)
        plain = strategy.transform_losses(losses)
        total = tf.reduce_sum(masked)
    np.testing.assert_array_equal(np.asarray(masked)[[0, 2]], np.asarray(plain)[[0, 2]])
    assert np.asarray(masked)[1] == 0.0 and np.asarray(plain)[1] == np.float32(0.4)
    grad = tape.gradient(total, strategy.loss_scales).numpy()
    s = np.array([0.2, 0.6])
    np.testing.assert_allclose(grad[[0, 2]], np.exp(s) * [0.5, 3.0] - 1.0, rtol=1e-6)
    assert grad[1] == 0.0
    # A step that moves every s (e.g. through optimizer momentum), then the
    # model's restore.
    strategy.loss_scales.assign_sub([0.1, 0.1, 0.1])
    strategy.restore_absent_tasks(mask, snapshot)
    np.testing.assert_allclose(
        np.asarray(strategy.loss_scales), [0.1, -0.4, 0.5], rtol=1e-6
    )
    # Eager == XLA with the mask.
    step = tf.function(
        lambda x, m: strategy.transform_losses(x, task_mask=m), jit_compile=True
    )
    np.testing.assert_allclose(
        step(losses, mask).numpy(),
        strategy.transform_losses(losses, task_mask=mask).numpy(),
        rtol=1e-6,
    )


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# The equal-projection system is asymmetric in task 1: with a zero row the
# (near-zero) update depends on which task comes first.
# Every shape in one test (every failing case reported).
def test_degenerate_inputs():
    degenerate_checks.check_cases(
        IMTLG,
        degenerate_inputs.degenerate_cases(),
        lambda case: {"permutation": case.kind != "one_zero_row"},
    )


# On both backends, inside a compiled step: finite on the degenerate inputs
# (and weights 0 for zero gradients, for present and absent tasks).
# Each shape compiles once; every failing case is reported.
@both_backends
def test_degenerate_inputs_finite_when_compiled():
    def check(case, mask, plain, masked):
        np.testing.assert_array_equal(masked[1][mask == 0], 0.0, case.id)

    degenerate_checks.check_compiled_cases(IMTLG, check)
