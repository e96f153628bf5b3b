"""keras_mtl without TensorFlow, and on backends it does not train on.

`import keras_mtl` must work on the JAX backend where TensorFlow is not
installed; the parts built on `tf.data` (`datasets`' `load` and
`TaskSampler`, `compare`) must then say what to install, and
`import keras_mtl` must not import the optional subpackages at all. On a
backend keras_mtl does not train on (torch, numpy), the import works and
training is refused with the supported backends named.

The checks that need a fresh interpreter (a backend is fixed at import)
run in subprocesses, where a meta-path finder makes TensorFlow unimportable
as if it were not installed.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_mtl.utils import backend as backend_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Raised for the blocked packages before any other finder looks, so that
# `import tensorflow` fails as it does where TensorFlow is not installed.
_BLOCK_PRELUDE = """
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    blocked = {blocked!r}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""

_TENSORFLOW_PACKAGES = ("tensorflow", "tensorflow_datasets", "tf_keras")

# The subpackages `import keras_mtl` leaves for their first use.
_OPTIONAL = ("datasets", "tuner", "compare", "testing")

# Checks that a call raises the clear ImportError (what needs TensorFlow,
# the package and the pip command) and not some other error.
_EXPECT_IMPORT_ERROR = """
def expect_import_error(call, what):
    try:
        call()
    except ImportError as error:
        message = str(error)
        assert what in message, message
        assert "TensorFlow" in message or "tensorflow" in message, message
        assert "pip install" in message, message
    else:
        raise AssertionError(f"{what}: no ImportError without TensorFlow")
"""


def _run(code, backend="jax", blocked=_TENSORFLOW_PACKAGES, timeout=180):
    """Runs `code` in a fresh interpreter on `backend`, with `blocked`
    unimportable and `expect_import_error` defined; returns the last line
    of its output, parsed as JSON."""
    prelude = _BLOCK_PRELUDE.format(blocked=tuple(blocked)) if blocked else ""
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    program = prelude + _EXPECT_IMPORT_ERROR + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_layers_datasets_and_utils_import_without_tensorflow():
    # keras_mtl/__init__ (which imports weighting) is bypassed
    # by a bare package object, so that this checks these subpackages on
    # their own: none imports TensorFlow, a layer runs, and what needs
    # TensorFlow says so by name.
    out = _run(
        """
        import json, os, types
        package = types.ModuleType("keras_mtl")
        package.__path__ = [os.path.abspath("keras_mtl")]
        sys.modules["keras_mtl"] = package

        import numpy as np
        import keras_mtl.layers
        import keras_mtl.utils.backend
        import keras_mtl.utils.serialization
        from keras_mtl.datasets import (
            TaskSampler, dense_digits, multi_mnist, paths, turkish_treebank, yeast,
        )

        layer = keras_mtl.layers.MMoE(num_tasks=2, num_experts=3, expert_units=4)
        outputs = layer(np.ones((2, 5), "float32"))

        expect_import_error(lambda: TaskSampler({"a": 10, "b": 5}), "TaskSampler")
        for module in (dense_digits, multi_mnist, turkish_treebank, yeast):
            # The error comes before any file is looked for.
            args = ("multi_mnist",) if module is multi_mnist else ()
            expect_import_error(
                lambda: module.load(*args, data_dir="/nonexistent"),
                module.__name__ + ".load",
            )
        for name in (
            "keras_mtl.datasets.multi_mnist_tfds",
            "keras_mtl.compare",
        ):
            expect_import_error(lambda: __import__(name), name)
        # The conflicting toy runs on JAX alone.
        import keras
        from keras_mtl.testing import run_conflicting_toy

        theta, _ = run_conflicting_toy(
            lambda grads, losses: keras.ops.mean(grads, axis=0), (-8.5, -5.0), 10
        )
        print(json.dumps({
            "toy": [float(v) for v in theta],
            "shapes": [list(o.shape) for o in outputs],
            "tensorflow": "tensorflow" in sys.modules,
            "file": keras_mtl.layers.__file__,
        }))
        """
    )
    assert out["shapes"] == [[2, 4], [2, 4]]
    assert out["toy"] != [-8.5, -5.0] and len(out["toy"]) == 2
    assert not out["tensorflow"]
    assert out["file"].startswith(str(ROOT))


def test_import_keras_mtl_without_tensorflow():
    out = _run(
        """
        import json
        import keras_mtl
        import keras_mtl.layers
        import keras_mtl.models
        import keras_mtl.weighting
        from keras_mtl import MultiTaskModel

        lazy = {name: f"keras_mtl.{name}" in sys.modules
                for name in ("datasets", "tuner", "compare", "testing")}
        strategy = keras_mtl.weighting.get("ew")
        sampler = keras_mtl.datasets.TaskSampler  # the numpy loaders' package
        expect_import_error(lambda: sampler({"a": 1}), "TaskSampler")
        import keras_mtl.tuner  # keras-tuner needs no TensorFlow on JAX
        expect_import_error(lambda: __import__("keras_mtl.compare"), "compare")
        print(json.dumps({
            "lazy": lazy,
            "model": MultiTaskModel.__name__,
            "strategy": type(strategy).__name__,
            "tensorflow": "tensorflow" in sys.modules,
            "file": keras_mtl.__file__,
        }))
        """
    )
    assert out["file"].startswith(str(ROOT))
    assert out["lazy"] == dict.fromkeys(
        ("datasets", "tuner", "compare", "testing"), False
    )
    assert out["strategy"] == "EqualWeighting"
    assert not out["tensorflow"]


# Records, for every keras_mtl module whose body runs `import tensorflow...`
# (an import statement at module level), the chain of modules being
# imported at that moment. TensorFlow is installed here: this lists what
# the blocked import above trips on, all of it at once.
_SCAN = """
import builtins, json, sys
_import = builtins.__import__
found = {}

def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    caller = sys._getframe(1)
    module = (globals or {}).get("__name__", "")
    if (
        name.partition(".")[0] in ("tensorflow", "tensorflow_datasets")
        and module.startswith("keras_mtl")
        and caller.f_code.co_name == "<module>"
        and module not in found
    ):
        chain, frame = [], caller
        while frame is not None:
            owner = frame.f_globals.get("__name__", "")
            if frame.f_code.co_name == "<module>" and owner.startswith("keras_mtl"):
                chain.append(f"{owner}:{frame.f_lineno}")
            frame = frame.f_back
        found[module] = " <- ".join(chain)
    return _import(name, globals, locals, fromlist, level)

builtins.__import__ = _recording_import
import keras_mtl
lazy = {name: f"keras_mtl.{name}" in sys.modules
        for name in ("datasets", "tuner", "compare", "testing")}
import keras_mtl.datasets, keras_mtl.layers, keras_mtl.tuner
from keras_mtl.datasets import (
    dense_digits, multi_mnist, paths, task_sampler, turkish_treebank, yeast,
)
print(json.dumps({"lazy": lazy, "found": found, "file": keras_mtl.__file__}))
"""


@pytest.fixture(scope="module")
def tensorflow_imports():
    out = _run(_SCAN, blocked=())
    assert out["file"].startswith(str(ROOT))
    return out


def test_import_keras_mtl_leaves_the_optional_subpackages_unimported(
    tensorflow_imports,
):
    assert tensorflow_imports["lazy"] == dict.fromkeys(_OPTIONAL, False)


def test_only_weighting_imports_tensorflow_at_import(tensorflow_imports):
    others = {
        module: chain
        for module, chain in tensorflow_imports["found"].items()
        if not module.startswith("keras_mtl.weighting")
    }
    assert not others, others


def test_no_module_imports_tensorflow_at_import(tensorflow_imports):
    found = tensorflow_imports["found"]
    assert not found, "\n".join(f"{m}: {c}" for m, c in sorted(found.items()))


# ---------------------------------------------------------------------------
# Backends keras_mtl does not train on
# ---------------------------------------------------------------------------

_UNSUPPORTED = """
import json
import keras
import numpy as np
import keras_mtl
from keras_mtl.utils.backend import check_supported_backend

result = {"backend": keras.backend.backend(), "file": keras_mtl.__file__}
try:
    check_supported_backend()
except NotImplementedError as error:
    result["check"] = str(error)
inputs = keras.Input((3,))
model = keras_mtl.MultiTaskModel(
    inputs, {"a": keras.layers.Dense(1)(inputs), "b": keras.layers.Dense(1)(inputs)}
)
try:
    model.compile(optimizer="sgd", loss="mse")
except NotImplementedError as error:
    result["compile"] = str(error)
except Exception as error:
    result["compile"] = f"{type(error).__name__}: {error}"
print(json.dumps(result))
"""


def _unsupported_backends():
    torch = pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="torch is not installed (the shared venv has none)",
    )
    return ["numpy", pytest.param("torch", marks=torch)]


@pytest.fixture(scope="module", params=_unsupported_backends())
def unsupported(request):
    # TensorFlow stays importable: parts of weighting/ still import it.
    return _run(_UNSUPPORTED, backend=request.param, blocked=())


def test_import_works_on_an_unsupported_backend(unsupported):
    assert unsupported["file"].startswith(str(ROOT))
    message = unsupported["check"]
    assert repr(unsupported["backend"]) in message
    assert "'tensorflow'" in message and "'jax'" in message
    assert "KERAS_BACKEND" in message


def test_compile_refuses_an_unsupported_backend(unsupported):
    assert "compile" in unsupported, "compile raised nothing"
    message = unsupported["compile"]
    assert message.startswith("MultiTaskModel.compile does not support"), message
    assert "'tensorflow'" in message and "'jax'" in message


# ---------------------------------------------------------------------------
# In process, on the suite's backend
# ---------------------------------------------------------------------------


@pytest.mark.both_backends
def test_check_supported_backend_passes_on_the_suite_backend():
    assert backend_utils.check_supported_backend() == keras.backend.backend()
    assert keras.backend.backend() in backend_utils.SUPPORTED_BACKENDS


@pytest.mark.both_backends
@pytest.mark.parametrize("name", ["torch", "numpy", "openvino"])
def test_check_supported_backend_names_the_supported_ones(monkeypatch, name):
    monkeypatch.setattr(keras.backend, "backend", lambda: name)
    with pytest.raises(NotImplementedError) as raised:
        backend_utils.check_supported_backend("fit")
    message = str(raised.value)
    assert message.startswith(f"fit does not support the Keras backend {name!r}")
    assert "'tensorflow' and 'jax'" in message


@pytest.mark.both_backends
def test_require_tensorflow_explains_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # "not installed"
    with pytest.raises(ImportError, match="pip install 'keras-mtl\\[tensorflow\\]'"):
        backend_utils.require_tensorflow("keras_mtl.datasets.yeast.load")
    with pytest.raises(ImportError, match="^keras_mtl.datasets.yeast.load needs"):
        backend_utils.require_tensorflow("keras_mtl.datasets.yeast.load")


@pytest.mark.both_backends
def test_lazy_subpackages_are_attributes():
    import keras_mtl

    assert keras_mtl.datasets.TaskSampler.__name__ == "TaskSampler"
    assert {"datasets", "tuner", "compare", "testing"} <= set(dir(keras_mtl))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keras_mtl.nope  # noqa: B018


def test_packaging_leaves_the_backend_to_the_user():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        extra: {_name(requirement) for requirement in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }
    core = {_name(requirement) for requirement in project["dependencies"]}
    assert core == {"keras", "numpy"}
    assert "tensorflow" in names["tensorflow"] and "jax" in names["jax"]
    assert "tensorflow" not in names["jax"]
    # README's commands: the test suite covers both backends and every part.
    assert names["tensorflow"] | names["jax"] | names["tuner"] <= names["test"]
    assert {"tensorflow", "absl-py", "matplotlib"} <= names["examples"]


def _name(requirement):
    for stop in "<>=!~;[ ":
        requirement = requirement.split(stop)[0]
    return requirement.lower()
