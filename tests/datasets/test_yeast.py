"""Tests of `keras_mtl.datasets.yeast` on a small csv.gz in river's layout."""

import gzip

import keras
import numpy as np
import pytest
from fake_data import make_yeast_file, real_data_kwargs

import keras_mtl
from keras_mtl.datasets import yeast


@pytest.fixture
def fake(tmp_path):
    path, features, labels = make_yeast_file(tmp_path / "yeast" / "yeast.csv.gz")
    return tmp_path, features, labels


def test_split_is_mulan_test_then_train(fake):
    data_dir, features, labels = fake
    x_test, y_test = yeast.load_arrays("test", standardize=False, data_dir=data_dir)
    x_train, y_train = yeast.load_arrays("train", standardize=False, data_dir=data_dir)
    # Feature Att1 of the fake file is the row index.
    np.testing.assert_array_equal(x_test[:, 0], np.arange(917))
    np.testing.assert_array_equal(x_train[:, 0], np.arange(917, 957))
    np.testing.assert_allclose(x_train, features[917:].astype(np.float32))
    assert list(y_train) == list(yeast.TASKS) and len(yeast.TASKS) == 14
    for i, task in enumerate(yeast.TASKS):
        assert y_train[task].dtype == np.float32
        np.testing.assert_array_equal(y_train[task], labels[917:, i])
        np.testing.assert_array_equal(y_test[task], labels[:917, i])


def test_validation_split_takes_the_last_training_rows(fake):
    data_dir, _, _ = fake
    x_train, _ = yeast.load_arrays(
        "train", validation_split=0.2, standardize=False, data_dir=data_dir
    )
    x_val, _ = yeast.load_arrays(
        "validation", validation_split=0.2, standardize=False, data_dir=data_dir
    )
    np.testing.assert_array_equal(x_train[:, 0], np.arange(917, 949))
    np.testing.assert_array_equal(x_val[:, 0], np.arange(949, 957))
    with pytest.raises(ValueError, match="validation_split"):
        yeast.load_arrays("validation", data_dir=data_dir)
    with pytest.raises(ValueError, match="validation_split"):
        yeast.load_arrays("train", validation_split=1.0, data_dir=data_dir)
    with pytest.raises(ValueError, match="split"):
        yeast.load_arrays("dev", data_dir=data_dir)


def test_standardized_with_training_statistics(fake):
    data_dir, features, _ = fake
    x_train, _ = yeast.load_arrays("train", validation_split=0.25, data_dir=data_dir)
    x_test, _ = yeast.load_arrays("test", validation_split=0.25, data_dir=data_dir)
    train = features[917:947]
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    np.testing.assert_allclose(x_train, (train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        x_test, (features[:917] - mean) / std, rtol=1e-5, atol=1e-4
    )
    varying = np.ones(103, bool)
    varying[5] = False  # the constant feature is only centred
    np.testing.assert_allclose(x_train[:, varying].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train[:, varying].std(0), 1.0, atol=1e-4)
    assert (x_train[:, 5] == 0).all() and x_train.dtype == np.float32


def test_bad_files_are_rejected(tmp_path):
    path = tmp_path / "yeast.csv.gz"
    with gzip.open(path, "wt") as file:
        file.write("Att1,Att2,Class1\n0.1,0.2,1\n")
    with pytest.raises(ValueError, match="Att"):
        yeast.read_csv(path)
    make_yeast_file(path, n_rows=100)
    with pytest.raises(ValueError, match="917"):
        yeast.load_arrays("train", data_dir=path)


def test_dataset_and_a_fit_step(fake):
    data_dir, _, _ = fake
    dataset = yeast.load("train", batch_size=16, seed=3, data_dir=data_dir)
    x, y = next(iter(dataset))
    assert x.shape == (16, 103) and y["label_13"].shape == (16,)
    again = next(iter(yeast.load("train", batch_size=16, seed=3, data_dir=data_dir)))
    np.testing.assert_array_equal(x.numpy(), again[0].numpy())

    # Three of the 14 tasks keep the first (traced) training step short.
    tasks = yeast.TASKS[:3]
    inputs = keras.Input((103,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs, {task: keras.layers.Dense(1, name=task)(hidden) for task in tasks}
    )
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss)
    subset = dataset.map(lambda x, y: (x, {task: y[task] for task in tasks}))
    history = model.fit(subset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="river==0.26.1"):
        yeast.load_arrays(data_dir=tmp_path)


def test_real_file_when_present():
    kwargs = real_data_kwargs("yeast")
    if kwargs is None:
        pytest.skip("real yeast file not fetched (scripts/fetch_data.sh)")
    x, y = yeast.load_arrays("train", standardize=False, **kwargs)
    assert x.shape == (1500, 103)
    # The first genes of MULAN's yeast-train.arff and yeast-test.arff.
    np.testing.assert_allclose(x[0, :3], [0.0937, 0.139771, 0.062774])
    np.testing.assert_array_equal(
        [y[t][0] for t in yeast.TASKS], [0, 0, 1, 1] + [0] * 10
    )
    x_test, _ = yeast.load_arrays("test", standardize=False, **kwargs)
    assert x_test.shape == (917, 103)
    np.testing.assert_allclose(x_test[0, :2], [0.004168, -0.170975])
