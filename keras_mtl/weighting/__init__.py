"""Loss-weighting and gradient-aggregation strategies.

Every strategy is a `Strategy` (a Keras layer) registered under a short
name. `get` resolves the `loss_weighting` argument of
`keras_mtl.MultiTaskModel.compile` the way `keras.losses.get` resolves a
loss: from a name, a config dict, a class or an instance.

>>> keras_mtl.weighting.get("ew")
<EqualWeighting name=equal_weighting, built=False>
"""

import inspect

import keras

from keras_mtl.weighting.adaptive_weighting import AdaptiveWeighting
from keras_mtl.weighting.aligned_mtl import AlignedMTL
from keras_mtl.weighting.auto_lambda import AutoLambda
from keras_mtl.weighting.cagrad import CAGrad
from keras_mtl.weighting.con_fig import ConFIG
from keras_mtl.weighting.cosmos import COSMOS
from keras_mtl.weighting.cr_mogm import CRMOGM
from keras_mtl.weighting.db_mtl import DBMTL
from keras_mtl.weighting.dualproj import DualProj
from keras_mtl.weighting.dynamic_task_prioritization import DynamicTaskPrioritization
from keras_mtl.weighting.dynamic_weight_average import DynamicWeightAverage
from keras_mtl.weighting.equal_weighting import EqualWeighting
from keras_mtl.weighting.excess_mtl import ExcessMTL
from keras_mtl.weighting.fairgrad import FairGrad
from keras_mtl.weighting.famo import FAMO
from keras_mtl.weighting.geometric_loss_strategy import GeometricLossStrategy
from keras_mtl.weighting.grad_norm import GradNorm
from keras_mtl.weighting.graddrop import GradDrop
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.gradvac import GradVac
from keras_mtl.weighting.imtl_g import IMTLG
from keras_mtl.weighting.imtl_l import IMTLL
from keras_mtl.weighting.krum import Krum
from keras_mtl.weighting.logse import LogSE
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.mgda import MGDA
from keras_mtl.weighting.moco import MoCo
from keras_mtl.weighting.modo import MoDo
from keras_mtl.weighting.nash_mtl import NashMTL
from keras_mtl.weighting.orthogonal_gradient_regularizer import (
    OrthogonalGradientRegularizer,
)
from keras_mtl.weighting.pbi import PBI
from keras_mtl.weighting.pcgrad import PCGrad
from keras_mtl.weighting.random_gradient_weighting import RandomGradientWeighting
from keras_mtl.weighting.random_loss_weighting import RandomLossWeighting
from keras_mtl.weighting.registry import lookup, registered_strategies
from keras_mtl.weighting.scaled_loss_weighting import ScaledLossWeighting
from keras_mtl.weighting.sdmgrad import SDMGrad
from keras_mtl.weighting.slaw import SLAW
from keras_mtl.weighting.smooth_tchebycheff import SmoothTchebycheff
from keras_mtl.weighting.soft_adapt import SoftAdapt
from keras_mtl.weighting.static_weighting import StaticWeighting
from keras_mtl.weighting.strategy import Strategy
from keras_mtl.weighting.trimmed_mean import TrimmedMean
from keras_mtl.weighting.uncertainty_weighting import UncertaintyWeighting
from keras_mtl.weighting.upgrad import UPGrad

__all__ = [
    "GradNorm",
    "OrthogonalGradientRegularizer",
    "ScaledLossWeighting",
    "AlignedMTL",
    "AutoLambda",
    "CAGrad",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "UPGrad",
    "COSMOS",
    "CRMOGM",
    "Krum",
    "MoDo",
    "PBI",
    "RandomGradientWeighting",
    "SDMGrad",
    "TrimmedMean",
    "FAMO",
    "IMTLL",
    "SLAW",
    "GeometricLossStrategy",
    "RandomLossWeighting",
    "SmoothTchebycheff",
    "SoftAdapt",
    "AdaptiveWeighting",
    "DBMTL",
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "EqualWeighting",
    "ExcessMTL",
    "GradDrop",
    "GradVac",
    "GradientAggregation",
    "LogSE",
    "LossWeighting",
    "MoCo",
    "StaticWeighting",
    "Strategy",
    "UncertaintyWeighting",
    "available",
    "deserialize",
    "get",
    "serialize",
]


def available():
    """Returns the sorted canonical names of all registered strategies."""
    return sorted(registered_strategies())


def serialize(strategy):
    """Returns the Keras serialization (a JSON-able dict) of a strategy."""
    return keras.saving.serialize_keras_object(strategy)


def deserialize(config, custom_objects=None):
    """Rebuilds a strategy from `serialize`'s output or a short config.

    Accepts the full Keras form (`{"class_name": ..., "config": ...,
    "module": ..., "registered_name": ...}`) and the short form
    `{"class_name": "uw", "config": {...}}` where `class_name` is any
    registered name.
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            f"A strategy config must be a dict with a 'class_name' key, got {config!r}."
        )
    # Strategies are built by the model they are compiled with (it knows the
    # task names and the number of shared parameters), not from the shapes
    # recorded when they were saved.
    config = {k: v for k, v in config.items() if k != "build_config"}
    cls = lookup(str(config["class_name"]).split(">")[-1])
    if cls is not None and "module" not in config:
        return cls.from_config(dict(config.get("config") or {}))
    if cls is None and "module" not in config:
        raise ValueError(
            f"Unknown strategy {config['class_name']!r} in config {config!r}. "
            f"Valid names: {', '.join(available())}."
        )
    obj = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)
    if not isinstance(obj, Strategy):
        raise ValueError(f"Config {config!r} does not describe a strategy.")
    return obj


def get(identifier):
    """Resolves a strategy from a name, config, class or instance.

    Args:
        identifier: None (equal weighting), a registered name such as
            `"ew"` or `"uw"` (case-insensitive; see `available()`), a dict
            as produced by `serialize`, a `Strategy` subclass (instantiated
            with default arguments) or a `Strategy` instance (returned as
            is).

    Returns:
        A `Strategy` instance.

    Raises:
        ValueError: if the identifier cannot be resolved; the message lists
            the valid names.
    """
    if identifier is None:
        return EqualWeighting()
    if isinstance(identifier, Strategy):
        return identifier
    if inspect.isclass(identifier) and issubclass(identifier, Strategy):
        return _instantiate(identifier, identifier.__name__)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = lookup(identifier)
        if cls is None:
            raise ValueError(
                f"Unknown loss_weighting strategy {identifier!r}. Valid names: "
                f"{', '.join(available())}."
            )
        return _instantiate(cls, identifier)
    raise ValueError(
        "Could not interpret loss_weighting identifier "
        f"{identifier!r} (type {type(identifier).__name__}): expected None, "
        "a strategy name, a config dict, a Strategy class or instance. Valid "
        f"names: {', '.join(available())}."
    )


def _instantiate(cls, identifier):
    """Instantiates `cls` with its defaults, or says which arguments lack."""
    required = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name != "self"
    ]
    if required:
        raise ValueError(
            f"Strategy {identifier!r} ({cls.__name__}) needs the arguments "
            f"{required}: pass an instance, e.g. {cls.__name__}("
            f"{', '.join(f'{r}=...' for r in required)}), or a config dict "
            f'{{"class_name": "{cls.registry_name}", "config": {{...}}}}.'
        )
    return cls()
