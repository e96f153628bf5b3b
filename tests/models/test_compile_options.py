"""`MultiTaskModel.compile` checks every argument before it changes the
model (`keras_mtl/models/_compile_options.py`, `resolve_compile`)."""

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

from keras_mtl.weighting.trimmed_mean import TrimmedMean

pytestmark = pytest.mark.both_backends


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(loss_weighting="dwa", task_sampling="uniform"), "fixed weights"),
        (
            dict(loss_weighting="pcgrad", per_task_gradients="rows"),
            "per_task_gradients",
        ),
        (dict(loss_weighting="uw", on_nonfinite="ignore"), "on_nonfinite"),
        (
            dict(loss_weighting=TrimmedMean(trim_number=0), missing_labels={"cls": -1}),
            "missing_labels",
        ),
    ],
)
def test_a_refused_compile_leaves_the_compiled_model_as_it_was(bad, match):
    model = two_task_mlp()
    model.compile(optimizer="sgd", loss=TWO_TASK_LOSSES, loss_weighting="ew")
    strategy, optimizer = model.loss_weighting, model.optimizer
    with pytest.raises(ValueError, match=match):
        model.compile(optimizer=keras.optimizers.Adam(), loss=TWO_TASK_LOSSES, **bad)
    assert model.loss_weighting is strategy and model.optimizer is optimizer
    assert (
        model.get_compile_config()["loss_weighting"]["class_name"] == "EqualWeighting"
    )
    x, y = two_task_data(n=8)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["cls_weight"] == logs["reg_weight"] == 1.0
    assert np.isfinite(logs["loss"])
