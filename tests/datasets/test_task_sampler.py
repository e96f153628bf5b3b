"""TaskSampler: per-task data sets interleaved into one training pipeline."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import digits_data

import keras_mtl
from keras_mtl.datasets.task_sampler import TaskSampler

SIZES = {"a": 900, "b": 100}


def _toy_datasets(batch=4):
    x_a = np.zeros((10, 3), "float32")
    x_b = np.ones((6, 3), "float32")
    return {
        "a": tf.data.Dataset.from_tensor_slices(
            (x_a, np.arange(10, dtype="int32"))
        ).batch(batch),
        "b": tf.data.Dataset.from_tensor_slices(
            (x_b, np.full((6, 2), 0.5, "float32"))
        ).batch(batch),
    }


def _sequence(sampler, datasets, n):
    """Which task gave each of the first n batches."""
    tasks = []
    for x, _ in sampler.interleave(datasets).take(n):
        tasks.append("a" if float(x[0, 0]) == 0.0 else "b")
    return tasks


def test_probabilities_follow_the_closed_forms():
    sizes = np.array([900.0, 100.0])
    uniform = TaskSampler(SIZES, "uniform").probabilities(0).numpy()
    np.testing.assert_allclose(uniform, [0.5, 0.5])
    proportional = TaskSampler(SIZES).probabilities(0).numpy()
    np.testing.assert_allclose(proportional, sizes / sizes.sum(), rtol=1e-6)
    square_root = TaskSampler(SIZES, alpha=0.5).probabilities(0).numpy()
    np.testing.assert_allclose(square_root, [0.75, 0.25], rtol=1e-6)


def test_annealed_goes_from_proportional_to_exponent_point_two():
    sampler = TaskSampler(SIZES, "annealed", steps_per_epoch=10, epochs=5)
    first = sampler.probabilities(0).numpy()
    np.testing.assert_allclose(first, [0.9, 0.1], rtol=1e-6)
    last = sampler.probabilities(49).numpy()
    expected = np.array([900.0, 100.0]) ** 0.2
    np.testing.assert_allclose(last, expected / expected.sum(), rtol=1e-5)
    # Epoch 3 of 5: a = 1 - 0.8 * 2 / 4 = 0.6.
    middle = sampler.probabilities(25).numpy()
    expected = np.array([900.0, 100.0]) ** 0.6
    np.testing.assert_allclose(middle, expected / expected.sum(), rtol=1e-5)
    # The big task's share falls monotonically over the epochs.
    shares = [sampler.probabilities(10 * e).numpy()[0] for e in range(5)]
    assert all(b < a for a, b in zip(shares, shares[1:]))


def test_batches_carry_their_task_targets_and_sentinels_for_the_others():
    sampler = TaskSampler(SIZES, "uniform", seed=0)
    datasets = _toy_datasets()
    assert sampler.missing_labels(datasets) == {
        "a": -1,
        "b": pytest.approx(np.nan, nan_ok=True),
    }
    seen = set()
    for x, y in sampler.interleave(datasets).take(12):
        assert set(y) == {"a", "b"}
        batch = x.shape[0]
        assert y["a"].shape == (batch,) and y["a"].dtype == tf.int32
        assert y["b"].shape == (batch, 2) and y["b"].dtype == tf.float32
        if float(x[0, 0]) == 0.0:
            seen.add("a")
            assert np.all(y["a"].numpy() >= 0)
            assert np.all(np.isnan(y["b"].numpy()))
        else:
            seen.add("b")
            assert np.all(y["a"].numpy() == -1)
            np.testing.assert_array_equal(y["b"].numpy(), 0.5)
    assert seen == {"a", "b"}


def test_draw_frequencies_match_the_probabilities():
    n = 2000
    tasks = _sequence(TaskSampler({"a": 3, "b": 1}, seed=1), _toy_datasets(), n)
    share = tasks.count("a") / n
    # 0.75 within five binomial standard deviations (about 0.048).
    assert abs(share - 0.75) < 5 * np.sqrt(0.75 * 0.25 / n)


def test_annealed_draws_change_share_between_epochs():
    sampler = TaskSampler(
        {"a": 900, "b": 100}, "annealed", steps_per_epoch=600, epochs=2, seed=2
    )
    tasks = _sequence(sampler, _toy_datasets(), 1200)
    first, second = tasks[:600].count("b") / 600, tasks[600:].count("b") / 600
    expected = np.array([900.0, 100.0]) ** 0.2
    expected = expected[1] / expected.sum()  # about 0.39
    assert abs(first - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 600)
    assert abs(second - expected) < 5 * np.sqrt(expected * (1 - expected) / 600)


def test_same_seed_same_sequence_and_other_seed_another():
    datasets = _toy_datasets()
    one = _sequence(TaskSampler(SIZES, "uniform", seed=3), datasets, 40)
    two = _sequence(TaskSampler(SIZES, "uniform", seed=3), datasets, 40)
    other = _sequence(TaskSampler(SIZES, "uniform", seed=4), datasets, 40)
    assert one == two
    assert one != other


def _digits_model():
    inputs = keras.Input((64,))
    shared = keras.layers.Dense(32, activation="relu", name="trunk")(inputs)
    return keras_mtl.MultiTaskModel(
        inputs,
        {
            "digit": keras.layers.Dense(10, name="digit_head")(shared),
            "parity": keras.layers.Dense(1, name="parity_head")(shared),
        },
    )


def test_a_step_on_one_task_leaves_the_other_head_unchanged():
    x, y = digits_data()
    datasets = {
        "digit": tf.data.Dataset.from_tensor_slices((x[:64], y["digit"][:64])).batch(
            16
        ),
        "parity": tf.data.Dataset.from_tensor_slices(
            (x[64:96], y["parity"][64:96, None])
        ).batch(16),
    }
    sampler = TaskSampler({"digit": 64, "parity": 32}, seed=0)
    model = _digits_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={
            "digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "parity": keras.losses.BinaryCrossentropy(from_logits=True),
        },
        missing_labels=sampler.missing_labels(datasets),
    )
    batch = next(iter(sampler.interleave(datasets)))
    task = "digit" if np.all(batch[1]["digit"].numpy() >= 0) else "parity"
    other = "parity" if task == "digit" else "digit"
    before = {
        t: [v.numpy() for v in model.task_variables[t]] for t in ("digit", "parity")
    }
    model.train_on_batch(*batch)
    for b, v in zip(before[other], model.task_variables[other]):
        np.testing.assert_array_equal(v.numpy(), b)
    assert any(
        not np.array_equal(b, v.numpy())
        for b, v in zip(before[task], model.task_variables[task])
    )


def test_trains_both_tasks_from_separate_real_data_sets_of_different_sizes():
    """Digit class from 1,200 images, parity from 300 others (real digits)."""
    x, y = digits_data()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    digit_idx, parity_idx, test_idx = order[:1200], order[1200:1500], order[1500:]
    datasets = {
        "digit": tf.data.Dataset.from_tensor_slices(
            (x[digit_idx], y["digit"][digit_idx])
        )
        .shuffle(1200, seed=0)
        .batch(32),
        "parity": tf.data.Dataset.from_tensor_slices(
            (x[parity_idx], y["parity"][parity_idx, None])
        )
        .shuffle(300, seed=0)
        .batch(32),
    }
    sampler = TaskSampler(
        {"digit": 1200, "parity": 300}, "annealed", steps_per_epoch=50, epochs=4, seed=0
    )
    keras.utils.set_random_seed(0)
    model = _digits_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={
            "digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "parity": keras.losses.BinaryCrossentropy(from_logits=True),
        },
        metrics={
            "digit": ["accuracy"],
            "parity": [keras.metrics.BinaryAccuracy(threshold=0.0)],
        },
        missing_labels=sampler.missing_labels(datasets),
    )
    history = model.fit(
        sampler.interleave(datasets), steps_per_epoch=50, epochs=4, verbose=0
    )
    # Both weights logged are 1 (EW), over the steps where the task was present.
    assert history.history["digit_weight"][-1] == 1.0
    result = model.evaluate(
        x[test_idx],
        {"digit": y["digit"][test_idx], "parity": y["parity"][test_idx, None]},
        verbose=0,
        return_dict=True,
    )
    assert result["digit_accuracy"] > 0.85
    assert result["parity_binary_accuracy"] > 0.8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": {}}, "sizes"),
        ({"sizes": {"a": 0}}, r"sizes\['a'\]"),
        ({"sizes": {"a": "many"}}, r"sizes\['a'\]"),
        ({"sizes": SIZES, "method": "round_robin"}, "method"),
        ({"sizes": SIZES, "alpha": -1.0}, "alpha"),
        ({"sizes": SIZES, "method": "annealed", "epochs": 3}, "steps_per_epoch"),
        ({"sizes": SIZES, "method": "annealed", "steps_per_epoch": 3}, "epochs"),
    ],
)
def test_bad_arguments_name_the_culprit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSampler(**kwargs)


def test_datasets_must_match_the_sizes():
    sampler = TaskSampler({"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*\['a', 'c'\]"):
        sampler.interleave(_toy_datasets())


def test_config_round_trip():
    sampler = TaskSampler(SIZES, "annealed", steps_per_epoch=5, epochs=3, seed=7)
    clone = TaskSampler.from_config(sampler.get_config())
    assert clone.get_config() == sampler.get_config()
    np.testing.assert_array_equal(
        clone.probabilities(12).numpy(), sampler.probabilities(12).numpy()
    )
