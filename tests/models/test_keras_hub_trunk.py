"""keras-hub backbones as shared trunks of a `MultiTaskModel`.

A 2-layer `BertBackbone` with a 40-word vocabulary, built from its config
(no download), carries two token-level heads. Its variables are found
shared, and every gradient path gives the update its math promises through
it: per-task gradient rows (the matrix and Gramian paths) and
representation gradients (`rep_grad`) that sum to equal weighting's
gradient give equal weighting's update, the Gramian path gives the matrix
path's, XLA gives the eager update; `.keras` files round-trip exactly.

TensorFlow only for now: on JAX every run is an XLA compile of the
transformer (eager JAX is slower still), about 20 s each on 2 cores.
"""

import os

import keras
import numpy as np
import pytest
from model_fixtures import SumOfGradients

import keras_mtl

keras_hub = pytest.importorskip("keras_hub")

LENGTH, VOCABULARY, BATCH = 6, 40, 8
LOSSES = {
    "pos": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "dep": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
}


class GramianSum(keras_mtl.weighting.GradientAggregation):
    """Test-only Gramian strategy: unit weights (the sum of the rows)."""

    requires = "gramian"

    def compute_weights(self, gramian, losses=None, training=True):
        return keras.ops.ones((gramian.shape[0],))


class RepSum(SumOfGradients):
    supports_rep_grad = True


def tagger(num_layers=2):
    """A `MultiTaskModel` on a tiny BERT: POS (5 tags) and head-relation (7
    labels) heads on every token."""
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
        dropout=0.0,
    )
    heads = {"pos": keras.layers.Dense(5), "dep": keras.layers.Dense(7)}
    return keras_mtl.MultiTaskModel.from_trunk(
        backbone, heads, trunk_output="sequence_output"
    )


def batch(seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, LENGTH + 1, size=BATCH)
    mask = np.arange(LENGTH)[None, :] < lengths[:, None]
    x = {
        "token_ids": np.where(mask, rng.integers(1, VOCABULARY, (BATCH, LENGTH)), 0),
        "segment_ids": np.zeros((BATCH, LENGTH), "int32"),
        "padding_mask": mask,
    }
    y = {
        "pos": rng.integers(0, 5, (BATCH, LENGTH)),
        "dep": rng.integers(0, 7, (BATCH, LENGTH)),
    }
    # Padded tokens carry no label: sample weight 0 there.
    return x, y, {task: mask.astype("float32") for task in y}


def trained(strategy, steps=2, num_layers=2, **compile_kwargs):
    """The model after `steps` SGD steps; eager unless `compile_kwargs` say
    otherwise (two steps of a tiny BERT run faster eagerly than traced)."""
    compile_kwargs.setdefault("run_eagerly", "jit_compile" not in compile_kwargs)
    keras.utils.set_random_seed(5)
    model = tagger(num_layers)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=LOSSES,
        loss_weighting=strategy,
        **compile_kwargs,
    )
    for step in range(steps):
        x, y, weights = batch(step)
        model.train_on_batch(x, y, sample_weight=weights)
    return model


def values(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def test_the_backbone_is_shared_and_the_heads_are_the_tasks_own():
    model = tagger()
    backbone = model.layers[
        [type(layer).__name__ for layer in model.layers].index("BertBackbone")
    ]
    assert {v.path for v in model.shared_variables} == {
        v.path for v in backbone.trainable_variables
    }
    for task, variables in model.task_variables.items():
        assert len(variables) == 2 and all(task != "" for _ in variables)
    with pytest.raises(ValueError, match="sequence_output"):
        keras_mtl.MultiTaskModel.from_trunk(
            backbone, {"pos": keras.layers.Dense(5), "dep": keras.layers.Dense(7)}
        )


@pytest.fixture(scope="module")
def equal_weighting():
    return values(trained("ew"))


@pytest.mark.parametrize(
    "strategy, compile_kwargs",
    [
        (SumOfGradients, {}),
        (GramianSum, {"per_task_gradients": "gramian"}),
        (lambda: RepSum(rep_grad=True), {}),
    ],
    ids=["matrix", "gramian", "rep_grad"],
)
def test_summed_task_gradients_give_equal_weightings_update(
    strategy, compile_kwargs, equal_weighting
):
    model = trained(strategy(), **compile_kwargs)
    for a, b in zip(equal_weighting, values(model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_gramian_path_gives_the_matrix_paths_update():
    # MGDA: its min-norm weights move with every entry of the Gramian.
    reference = values(trained("mgda"))
    gramian = trained("mgda", per_task_gradients="gramian")
    assert gramian._backward_stages() is None  # the backbone is one layer
    for a, b in zip(reference, values(gramian)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_xla_gives_the_eager_update_and_save_load_round_trips(tmp_path):
    # One transformer layer: XLA's compile time grows with the depth, what
    # is checked does not.
    eager = trained("dwa", steps=3, num_layers=1)
    xla = trained("dwa", steps=3, num_layers=1, jit_compile=True)
    for a, b in zip(values(eager), values(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # The eager model is saved: predicting with the XLA one (and its
    # reloaded twin) would compile two more XLA functions.
    path = os.path.join(tmp_path, "tagger.keras")
    eager.save(path)
    loaded = keras.models.load_model(path)
    x, _, _ = batch(7)
    for a, b in zip(
        eager.predict(x, verbose=0).values(), loaded.predict(x, verbose=0).values()
    ):
        np.testing.assert_array_equal(a, b)
    assert len(loaded.loss_weighting.weights) == len(eager.loss_weighting.weights) > 0
    for a, b in zip(eager.loss_weighting.weights, loaded.loss_weighting.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    assert loaded.get_compile_config() == eager.get_compile_config()
