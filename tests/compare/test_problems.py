"""The problems: loaders on tiny real-format files, the networks, the metrics."""

import keras
import numpy as np
import pytest
from compare_data import make_data_dir

from keras_mtl.compare import problems
from keras_mtl.compare.runner import make_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


def test_lenet_of_sener_and_koltun(data_dir):
    problem = problems.get("multi_fashion")
    data = problem.load(train_size=50, test_size=30, data_dir=data_dir)
    assert data.train.x.shape == (50, 28, 28, 1) and len(data.test) == 30
    assert set(data.train.y) == {"left", "right"}
    model = problem.build_model(data)
    # conv(1->10, 5x5) -> pool -> conv(10->20, 5x5) -> pool: 4x4x20 = 320
    # features into the shared dense 50.
    assert model.get_layer("flatten").output.shape[-1] == 320
    sizes = {v.path: int(np.prod(v.shape)) for v in model.shared_variables}
    assert sum(sizes.values()) == (10 * 25 + 10) + (20 * 10 * 25 + 20) + (320 * 50 + 50)
    for task in ("left", "right"):
        own = sum(int(np.prod(v.shape)) for v in model.task_variables[task])
        assert own == (50 * 50 + 50) + (50 * 10 + 10)
    assert isinstance(model.get_layer("channel_dropout"), keras.layers.SpatialDropout2D)
    assert model.get_layer("channel_dropout").rate == 0.5
    assert model.get_layer("left_dropout").rate == 0.5
    out = model(data.test.x[:3])
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "left": (3, 10),
        "right": (3, 10),
    }


def test_single_task_model_keeps_the_trunk_and_one_head(data_dir):
    problem = problems.get("multi_fashion")
    data = problem.load(train_size=20, test_size=10, data_dir=data_dir)
    full = problem.build_model(data)
    single = problem.build_model(data, tasks=("right",))
    assert single.task_names == ("right",)
    assert single.count_params() == full.count_params() - (50 * 50 + 50 + 50 * 10 + 10)


@pytest.mark.parametrize("name", ["yeast", "turkish_treebank", "dense_digits"])
def test_every_problem_trains_one_step(name, data_dir):
    problem = problems.get(name)
    data = problem.load(
        train_size=problem.quick["train_size"],
        test_size=problem.quick["test_size"] or 64,
        data_dir=data_dir,
        quick=True,
    )
    # At most the quick sizes (the tiny fake files may hold fewer).
    assert 0 < len(data.train) <= problem.quick["train_size"]
    assert 0 < len(data.test) <= (problem.quick["test_size"] or 64)
    model = problem.build_model(data)
    assert model.task_names == tuple(problem.tasks)
    specs = problem.metric_specs()
    assert set(specs) == set(problem.tasks)
    model.compile(
        optimizer="adam",
        loss=problem.losses(),
        loss_weighting="ew",
        **problem.compile_metrics(),
    )
    history = model.fit(
        make_dataset(data.train, 16),
        epochs=1,
        steps_per_epoch=1,
        verbose=0,
        shuffle=False,
    )
    assert np.isfinite(history.history["loss"][0])
    results = model.evaluate(make_dataset(data.test, 64), verbose=0, return_dict=True)
    for task in problem.tasks:
        for spec in specs[task]:
            assert np.isfinite(results[f"{task}_{spec.name}"])


def test_treebank_uses_weighted_metrics_and_padding_weights(data_dir):
    problem = problems.get("turkish_treebank")
    data = problem.load(train_size=8, test_size=4, data_dir=data_dir)
    assert set(data.train.sample_weight) == set(problem.tasks)
    assert data.train.sample_weight["upos"].shape == data.train.x.shape
    assert list(problem.compile_metrics()) == ["weighted_metrics"]


def test_directions_and_unknown_name():
    assert problems.get("dense_digits").directions() == {
        "segmentation": [("accuracy", True)],
        "edges": [("auc", True)],
        "depth": [("mae", False)],
    }
    assert problems.get("Multi-Fashion").name == "multi_fashion"
    with pytest.raises(ValueError, match="multi_fashion"):
        problems.get("cifar")
