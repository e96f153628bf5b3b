"""The trunk cut into stages for the staged Gramian path: where it is cut,
which variables each stage owns, when it is not cut, and that training
through the stages gives the update of the (T, P) matrix path."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.models._backward_stages import find_backward_stages

INPUT_DIM = 6
TASKS = ("a", "b", "c")
LOSSES = {
    "a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "b": "mse",
    "c": "mse",
}


def dense(units, seed, name=None, activation="tanh"):
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer=keras.initializers.RandomUniform(-0.1, 0.1, seed=seed + 50),
        name=name,
    )


def heads(a, b, c):
    return {
        "a": dense(3, 11, "a", None)(a),
        "b": dense(1, 12, "b", None)(b),
        "c": dense(2, 13, "c", None)(c),
    }


def chain(depth=3, scale=1):
    """Dense layers in a row, with an activation and a dropout layer (no
    variables) between the first two."""
    inputs = keras.Input((INPUT_DIM,))
    h = dense(8 * scale, 0, activation=None)(inputs)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.25, seed=3)(h)
    for i in range(1, depth):
        h = dense(7 * scale, i)(h)
    return keras_mtl.MultiTaskModel(inputs, heads(h, h, h))


def residual(scale=1):
    """A residual block: the tensor inside it is skipped over, no cut; task
    a reads that tensor."""
    inputs = keras.Input((INPUT_DIM,))
    h = dense(8 * scale, 0)(inputs)
    inner = dense(8 * scale, 1)(h)
    block = keras.layers.Add()([h, dense(8 * scale, 2)(inner)])
    top = dense(5 * scale, 3)(block)
    return keras_mtl.MultiTaskModel(inputs, heads(inner, top, top))


def heads_at_depth(scale=1):
    """Task a reads the first layer, b and c the third."""
    inputs = keras.Input((INPUT_DIM,))
    h1 = dense(8 * scale, 0)(inputs)
    h3 = dense(5 * scale, 2)(dense(7 * scale, 1)(h1))
    return keras_mtl.MultiTaskModel(inputs, heads(h1, h3, h3))


def two_inputs(scale=1):
    """Two branches fused: the fused tensor is the only cut."""
    left, right = keras.Input((INPUT_DIM,)), keras.Input((3,))
    fused = keras.layers.Concatenate()(
        [dense(4 * scale, 0)(left), dense(4 * scale, 1)(right)]
    )
    top = dense(6 * scale, 2)(dense(6 * scale, 3)(fused))
    return keras_mtl.MultiTaskModel([left, right], heads(top, top, top))


def one_layer(scale=1):
    inputs = keras.Input((INPUT_DIM,))
    h = dense(8 * scale, 0)(inputs)
    return keras_mtl.MultiTaskModel(inputs, heads(h, h, h))


def tied_layer(scale=1):
    """One Dense layer applied at two depths: its variables serve two
    stages, so the trunk is not cut."""
    inputs = keras.Input((INPUT_DIM,))
    first = dense(8 * scale, 0)(inputs)
    tied = dense(8 * scale, 1)
    h = tied(dense(8 * scale, 2)(tied(first)))
    return keras_mtl.MultiTaskModel(inputs, heads(h, h, h))


def head_reads_input(scale=1):
    inputs = keras.Input((INPUT_DIM,))
    h = dense(7 * scale, 1)(dense(8 * scale, 0)(inputs))
    mixed = keras.layers.Concatenate()([h, inputs])
    return keras_mtl.MultiTaskModel(inputs, heads(mixed, h, h))


def stages_of(model, batch_size=1):
    """The stages of `model`; with one example per step, activations cost
    next to nothing and every cut below some variables is kept."""
    return find_backward_stages(model, model._task_graph, batch_size)


def variable_names(model, stage):
    return [model.shared_variables[i].path.split("/")[0] for i in stage.variables]


def test_a_chain_is_cut_after_every_layer_with_variables():
    model = chain(depth=3)
    stages = stages_of(model)
    assert [len(s.variables) for s in stages.stages] == [2, 2, 2]
    assert [s.variables for s in stages.stages] == [(0, 1), (2, 3), (4, 5)]
    # The activation and dropout layers join the stage above them.
    assert [s.has_cut_input for s in stages.stages] == [False, True, True]
    assert [s.has_cut_output for s in stages.stages] == [True, True, False]
    assert stages.stages[-1].representations == (0,)


def test_a_residual_block_is_one_stage():
    model = residual()
    stages = stages_of(model)
    assert [s.variables for s in stages.stages] == [(0, 1), (2, 3, 4, 5), (6, 7)]
    # Task a's representation is made inside the block's stage.
    (index,) = stages.stages[1].representations
    assert model.shared_representations[index].shape == (None, 8)
    assert stages.stages[2].representations == (1 - index,)


def test_heads_at_depth_read_the_cuts():
    model = heads_at_depth()
    stages = stages_of(model)
    reps = [id(r) for r in model.shared_representations]
    assert [s.variables for s in stages.stages] == [(0, 1), (2, 3), (4, 5)]
    first, second, last = stages.stages
    # Task a's representation is the first cut; b and c's is on top.
    assert reps[first.cut_representation] == id(model.shared_representations[0])
    assert first.representations == second.representations == ()
    assert second.cut_representation is None and last.representations == (1,)


def test_two_branches_are_cut_where_they_are_fused():
    stages = stages_of(two_inputs())
    assert [len(s.variables) for s in stages.stages] == [4, 2, 2]


@pytest.mark.parametrize(
    "build", [one_layer, tied_layer, head_reads_input], ids=lambda f: f.__name__
)
def test_trunks_without_a_usable_cut_are_not_staged(build):
    assert stages_of(build()) is None


def test_overridden_variable_roles_outside_the_heads_disable_the_stages():
    model = chain(depth=3, scale=TRAIN_SCALE)
    assert model._backward_stages() is not None
    first_kernel = model.shared_variables[0]
    model.set_variable_roles(
        shared=model.shared_variables[1:], tasks={"a": [first_kernel]}
    )
    # Task a's own variable now lies in the trunk, out of the heads' reach.
    assert model._backward_stages() is None


def data(model, n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = [
        rng.normal(size=(n, *tensor.shape[1:])).astype("float32")
        for tensor in model.inputs
    ]
    y = {
        "a": rng.integers(0, 3, size=(n,)).astype("int32"),
        "b": 4.0 * rng.normal(size=(n, 1)).astype("float32"),
        "c": 0.5 * rng.normal(size=(n, 2)).astype("float32"),
    }
    return (x[0] if len(x) == 1 else x), y


# Trained models are wide enough (64 units) that, at the 32 examples per
# step assumed while tracing, cutting the trunk pays.
TRAIN_SCALE = 8
UNSTAGED = ("tied_layer",)


def train(build, strategy, mode, jit_compile=False, **compile_kw):
    keras.utils.set_random_seed(2)
    model = build(scale=TRAIN_SCALE)
    if mode == "gramian":
        staged = model._backward_stages() is not None
        assert staged == (build.__name__ not in UNSTAGED), build.__name__
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=LOSSES,
        loss_weighting=strategy,
        per_task_gradients=mode,
        jit_compile=jit_compile,
        **compile_kw,
    )
    x, y = data(model)
    if compile_kw.get("missing_labels"):
        y["c"][:16] = -1.0  # no label of task c in the first batch
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    return model


def assert_same_weights(reference, other):
    for a, b in zip(reference.weights, other.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), 2e-5, 1e-6, err_msg=a.path)
    for a, b in zip(reference.loss_weighting.weights, other.loss_weighting.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), 2e-5, 1e-6, err_msg=a.path)


@pytest.mark.parametrize(
    "build",
    [chain, residual, heads_at_depth, two_inputs, tied_layer],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("strategy", ["mgda", "upgrad"])
def test_staged_gramian_path_trains_like_the_matrix_path(build, strategy):
    assert_same_weights(
        train(build, strategy, "matrix"), train(build, strategy, "gramian")
    )


def test_staged_gramian_path_under_xla_trains_like_the_matrix_path():
    assert_same_weights(
        train(heads_at_depth, "mgda", "matrix", jit_compile=True),
        train(heads_at_depth, "mgda", "gramian", jit_compile=True),
    )


def test_staged_gramian_path_with_a_missing_task_trains_like_the_matrix_path():
    assert_same_weights(
        train(heads_at_depth, "imtl", "matrix", missing_labels=-1.0),
        train(heads_at_depth, "imtl", "gramian", missing_labels=-1.0),
    )


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_staged_gramian_path_under_mixed_float16_trains_like_the_matrix_path(
    mixed_float16,
):
    """float16 cotangents cross the cuts; the loss scale is removed from
    the Gramian as on the matrix path."""
    reference = train(chain, "mgda", "matrix")
    staged = train(chain, "mgda", "gramian")
    assert isinstance(staged.optimizer, keras.optimizers.LossScaleOptimizer)
    for a, b in zip(reference.trainable_variables, staged.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), 2e-3, 2e-3, err_msg=a.path)


def nested(scale=1):
    """The trunk as a nested functional model (one layer of the outer
    model) holding a residual block, then a nested Sequential."""
    inner_inputs = keras.Input((INPUT_DIM,))
    h = dense(8 * scale, 0)(inner_inputs)
    block = keras.layers.Add()([h, dense(8 * scale, 2)(dense(8 * scale, 1)(h))])
    backbone = keras.Model(inner_inputs, block, name="backbone")
    neck = keras.Sequential([dense(7 * scale, 3), dense(5 * scale, 4)], name="neck")
    inputs = keras.Input((INPUT_DIM,))
    top = neck(backbone(inputs))
    return keras_mtl.MultiTaskModel(inputs, heads(top, top, top))


def test_nested_models_are_cut_between_their_layers():
    model = nested()
    stages = stages_of(model)
    # backbone: first layer | residual block | the neck, whose two layers
    # (63 + 40 parameters) are together no larger than the block (144).
    assert [len(s.variables) for s in stages.stages] == [2, 4, 4]
    assert sorted(i for s in stages.stages for i in s.variables) == list(range(10))


def test_a_keras_applications_backbone_is_cut_at_its_blocks():
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras_mtl.MultiTaskModel(inputs, heads(features, features, features))
    stages = stages_of(model)
    # Each of the 10 residual blocks is one stage; the other layers with
    # variables are a stage each.
    assert len(stages.stages) > 20
    assert sorted(i for s in stages.stages for i in s.variables) == list(
        range(len(model.shared_variables))
    )


def test_staged_gramian_path_through_nested_models_trains_like_the_matrix_path():
    assert_same_weights(
        train(nested, "mgda", "matrix"), train(nested, "mgda", "gramian")
    )


def test_cuts_are_kept_only_where_activations_cost_less_than_parameters():
    """A stage holds T per-task gradients of its parameters and T per-task
    cotangents at its two cuts (batch_size times the cut's width)."""
    model = chain(depth=4, scale=TRAIN_SCALE)  # 6 -> 64 -> 56 -> 56 -> 56
    sizes = [len(s.variables) for s in stages_of(model, batch_size=1).stages]
    assert sizes == [2, 2, 2, 2]
    # At 32 examples a cut costs 32 * 56 = 1792 per side: a 56 x 56 layer
    # (3192) is worth its own stage only at the top (one cut); below, pairs.
    sizes = [len(s.variables) for s in stages_of(model, batch_size=32).stages]
    assert sizes == [4, 2, 2]
    # At 10,000 examples no cut pays: one stage, the unstaged path.
    assert stages_of(model, batch_size=10_000) is None


def test_balanced_bounds_minimise_the_largest_stage_then_the_stages():
    from keras_mtl.models._backward_stages import _balanced_bounds

    # Free cuts: stages of 3 each; merging any two would make a 6.
    assert _balanced_bounds([3, 3, 3], [0, 0, 0, 0]) == [0, 1, 2, 3]
    # The two small stages join: as large a largest stage (5), one fewer.
    assert _balanced_bounds([5, 1, 1, 5], [0, 0, 0, 0, 0]) == [0, 1, 3, 4]
    # Cuts costing 2: the middle stage is 3 + 2 + 2 = 7, still the best.
    assert _balanced_bounds([3, 3, 3], [0, 2, 2, 0]) == [0, 1, 2, 3]
    # Cuts costing 4: any cut makes a stage of at least 10 > 9, the whole.
    assert _balanced_bounds([3, 3, 3], [0, 4, 4, 0]) == [0, 3]
