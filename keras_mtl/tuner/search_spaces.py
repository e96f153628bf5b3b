"""Search spaces: the ranges the tuner tries for strategies and architectures.

The ranges live here, not in the strategy classes: a strategy knows its
defaults and what values are valid, not what is worth trying.

`SEARCH_SPACES` maps every registered strategy name of `keras_mtl.weighting`
to its space. A space is either

- None: the strategy has nothing worth tuning (equal weighting, PCGrad, ...);
  it is built with its defaults;
- a function `space(hp) -> dict` that declares keras-tuner hyperparameters
  on `hp` and returns the strategy's constructor keyword arguments. A space
  that needs the model's tasks (one static weight per task) takes a second
  keyword argument, `space(hp, task_names=...)`;
- a dict of fixed keyword arguments (in a user's `search_spaces`, e.g.
  `{"dtp": {"kpi": "auc"}}`).

`MultiTaskHyperModel` calls every space of its strategy list inside
`hp.conditional_scope("strategy", [name])` and `hp.name_scope(name)`, so a
space names its hyperparameters locally ("temperature" becomes
"dwa/temperature") and they are active only in trials of that strategy.
Following keras-tuner, a space is also called for the strategies not
chosen in a trial (so that the tuner knows the whole space); there every
`hp.*` call returns None. A space must therefore only collect the values
into the dict, never compute with them (nested choices go in a nested
`hp.conditional_scope`, as in `adaptive_space`). A None value in the
returned dict (an inactive nested hyperparameter) is left out, so the
strategy uses its default.

Each space's default values are the strategy's own defaults, so the
default trial of a strategy is the library's default configuration.

`ARCHITECTURE_SPACE` maps the keyword choices of an architecture function
(see `MultiTaskHyperModel`) to functions `choice(hp) -> value`.

Example:

>>> from keras_mtl.tuner.search_spaces import SEARCH_SPACES
>>> import keras_tuner
>>> hp = keras_tuner.HyperParameters()
>>> SEARCH_SPACES["cagrad"](hp)
{'c': 0.5}
>>> sorted(set(keras_mtl.weighting.available()) - set(SEARCH_SPACES))
[]
"""

from __future__ import annotations

#: The strategies a `MultiTaskHyperModel` searches when none are given:
#: equal weighting and the methods of the common NYUv2 / CityScapes
#: comparison tables (loss weighting and gradient aggregation). Pass
#: `strategies="all"` for every registered strategy.
DEFAULT_STRATEGIES = (
    "ew",
    "uw",
    "dwa",
    "rlw",
    "gls",
    "famo",
    "db_mtl",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl",
    "nash_mtl",
    "aligned_mtl",
    "upgrad",
)


# --- Loss weighting -----------------------------------------------------


def adaptive_space(hp):
    """Huq & Pervin's adaptive weighting: mode, normalisation, temperature."""
    kwargs = {
        "mode": hp.Choice("mode", ["batch", "epoch"]),
        "normalize": hp.Choice("normalize", ["ratio", "softmax"]),
    }
    with hp.conditional_scope("normalize", ["softmax"]):
        kwargs["temperature"] = hp.Float(
            "temperature", 0.1, 10.0, sampling="log", default=1.0
        )
    return kwargs


def dtp_space(hp):
    """Dynamic Task Prioritization: focusing gamma and the KPI's EMA alpha.

    The KPI metric (`kpi`, default "accuracy") is not searched: it must be a
    metric compiled for every task; override the space to change it.
    """
    return {
        "gamma": hp.Float("gamma", 0.5, 4.0, sampling="log", default=1.0),
        "alpha": hp.Float("alpha", 0.05, 1.0, sampling="log", default=0.1),
    }


def dwa_space(hp):
    """Dynamic Weight Average: temperature; per-epoch or per-step EMA."""
    kwargs = {
        "temperature": hp.Float("temperature", 0.5, 10.0, sampling="log", default=2.0),
        "mode": hp.Choice("mode", ["epoch", "step"]),
    }
    with hp.conditional_scope("mode", ["step"]):
        kwargs["ema_decay"] = hp.Float("ema_decay", 0.5, 0.99, default=0.9)
    return kwargs


def famo_space(hp):
    """FAMO: learning rate and weight decay of the task logits."""
    return {
        "learning_rate": hp.Float(
            "learning_rate", 1e-3, 1e-1, sampling="log", default=0.025
        ),
        "weight_decay": hp.Float(
            "weight_decay", 1e-5, 1e-2, sampling="log", default=1e-3
        ),
    }


def gradnorm_space(hp):
    """GradNorm: asymmetry alpha (0.12 to 1.5 in the paper) and weight lr."""
    return {
        "alpha": hp.Float("alpha", 0.0, 3.0, default=1.5),
        "weight_learning_rate": hp.Float(
            "weight_learning_rate", 1e-3, 1e-1, sampling="log", default=0.025
        ),
    }


def orthogonal_space(hp):
    """Orthogonal-gradient regulariser: the penalty lambda."""
    return {"penalty": hp.Float("penalty", 0.1, 100.0, sampling="log", default=10.0)}


def rlw_space(hp):
    """Random loss weighting: the weight distribution."""
    return {
        "distribution": hp.Choice(
            "distribution",
            ["normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli"],
        )
    }


def rgw_space(hp):
    """Random gradient weighting: the weight distribution (as for RLW)."""
    return rlw_space(hp)


def auto_lambda_space(hp):
    """Auto-Lambda: the parametrization of the weights and their Adam
    learning rate (1e-3 in LibMTL; 3e-5 to 3e-4 in the authors' runs)."""
    return {
        "weights": hp.Choice("weights", ["softmax", "raw"]),
        "learning_rate": hp.Float(
            "learning_rate", 1e-5, 1e-2, sampling="log", default=1e-3
        ),
    }


def cosmos_space(hp):
    """COSMOS: the weight lambda of the cosine term (0.01 to 8 in the paper)."""
    return {"lambda_": hp.Float("lambda_", 0.01, 10.0, sampling="log", default=2.0)}


def pbi_space(hp):
    """PBI: the penalty theta on the distance to the ray (5 in the paper)."""
    return {"theta": hp.Float("theta", 0.5, 20.0, sampling="log", default=5.0)}


def slaw_space(hp):
    """SLAW: the EMA decay of the loss statistics."""
    return {"beta": hp.Choice("beta", [0.9, 0.99, 0.999], default=0.99)}


def slw_space(hp):
    """Scaled loss weighting: which shared gradients set the scales."""
    return {"gradients_of": hp.Choice("gradients_of", ["last_layer", "all"])}


def softadapt_space(hp):
    """SoftAdapt: focus beta and the variant."""
    return {
        "beta": hp.Float("beta", 0.01, 10.0, sampling="log", default=0.1),
        "variant": hp.Choice("variant", ["plain", "normalized", "loss_weighted"]),
    }


def static_space(hp, task_names=()):
    """Static weights: one weight in [0.1, 1] per task (default 1: EW)."""
    return {
        "weights": [
            hp.Float(f"weight_{task}", 0.1, 1.0, default=1.0) for task in task_names
        ]
    }


def stch_space(hp):
    """Smooth Tchebycheff: the smoothing mu."""
    return {"mu": hp.Float("mu", 0.01, 10.0, sampling="log", default=1.0)}


# --- Gradient aggregation -----------------------------------------------


def aligned_mtl_space(hp):
    """Aligned-MTL: the scale of the aligned singular values."""
    return {"scale_mode": hp.Choice("scale_mode", ["min", "median", "rmse"])}


def cagrad_space(hp):
    """CAGrad: the radius factor c (0.4 on NYUv2, LibMTL default 0.5)."""
    return {"c": hp.Float("c", 0.1, 0.9, default=0.5)}


def crmogm_space(hp):
    """CR-MOGM: the wrapped Gramian weighting and the averaging alpha."""
    return {
        "weighting": hp.Choice(
            "weighting", ["mgda", "upgrad", "dualproj", "imtl", "cagrad", "nash_mtl"]
        ),
        "alpha": hp.Float("alpha", 0.5, 0.99, default=0.9),
    }


def db_mtl_space(hp):
    """DB-MTL: the gradient EMA beta and its decay exponent."""
    return {
        "beta": hp.Float("beta", 0.5, 0.99, default=0.9),
        "beta_sigma": hp.Float("beta_sigma", 0.0, 1.0, default=0.0),
    }


def excess_mtl_space(hp):
    """ExcessMTL: the step size of the robust weights."""
    return {
        "robust_step_size": hp.Float(
            "robust_step_size", 1e-3, 1e-1, sampling="log", default=1e-2
        )
    }


def fairgrad_space(hp):
    """FairGrad: the alpha-fairness parameter (1: proportional fairness)."""
    return {"alpha": hp.Float("alpha", 0.1, 5.0, sampling="log", default=1.0)}


def graddrop_space(hp):
    """GradDrop: the leak of dropped gradient components."""
    return {"leak": hp.Float("leak", 0.0, 0.5, default=0.0)}


def gradvac_space(hp):
    """GradVac: the EMA rate beta of the similarity targets."""
    return {"beta": hp.Float("beta", 1e-3, 0.9, sampling="log", default=0.5)}


def krum_space(hp, task_names=()):
    """Krum: the assumed number f of Byzantine tasks (0 to T - 3; default 1,
    or 0 with three tasks) and the paper's squared scores."""
    largest = max(len(task_names) - 3, 0)
    return {
        "n_byzantine": hp.Int("n_byzantine", 0, largest, default=min(1, largest)),
        "squared": hp.Boolean("squared", default=False),
    }


def mgda_space(hp):
    """MGDA: the gradient normalisation."""
    return {
        "normalization": hp.Choice("normalization", ["none", "l2", "loss", "loss+"])
    }


def moco_space(hp):
    """MoCo: tracking rate beta, weight rate gamma, regularisation rho."""
    return {
        "beta": hp.Float("beta", 0.1, 0.9, default=0.5),
        "gamma": hp.Float("gamma", 0.01, 1.0, sampling="log", default=0.1),
        "rho": hp.Float("rho", 0.0, 1.0, default=0.0),
    }


def modo_space(hp):
    """MoDo: the step size gamma of the weights (1e-3 in LibMTL, 0.1 in
    TorchJD and the authors' code) and the regularisation rho."""
    return {
        "gamma": hp.Float("gamma", 1e-3, 1.0, sampling="log", default=0.1),
        "rho": hp.Float("rho", 0.0, 1.0, default=0.1),
    }


def nash_mtl_space(hp):
    """Nash-MTL: how often the weights are solved and the update clipping."""
    return {
        "update_weights_every": hp.Choice(
            "update_weights_every", [1, 5, 25], default=1
        ),
        "max_norm": hp.Choice("max_norm", [0.0, 1.0, 5.0], default=1.0),
    }


def sdmgrad_space(hp):
    """SDMGrad: the pull lambda towards the average gradient (0.3 in the
    authors' experiments; 0.6 their class default) and the inner step size
    (5 in LibMTL, 10 in TorchJD and the authors' code)."""
    return {
        "lambda_": hp.Float("lambda_", 0.05, 2.0, sampling="log", default=0.3),
        "lr": hp.Choice("lr", [1.0, 5.0, 10.0], default=10.0),
    }


def trimmed_mean_space(hp, task_names=()):
    """Trimmed mean: the values b trimmed at each end (0 to (T - 1) / 2)."""
    largest = max((len(task_names) - 1) // 2, 0)
    return {"trim_number": hp.Int("trim_number", 0, largest, default=min(1, largest))}


#: Registered strategy name -> its search space (None: nothing to tune).
SEARCH_SPACES = {
    "adaptive": adaptive_space,
    "aligned_mtl": aligned_mtl_space,
    "auto_lambda": auto_lambda_space,
    "cagrad": cagrad_space,
    "config": None,
    "cosmos": cosmos_space,
    "crmogm": crmogm_space,
    "db_mtl": db_mtl_space,
    "dtp": dtp_space,
    "dualproj": None,
    "dwa": dwa_space,
    "ew": None,
    "excess_mtl": excess_mtl_space,
    "fairgrad": fairgrad_space,
    "famo": famo_space,
    "gls": None,
    "graddrop": graddrop_space,
    "gradnorm": gradnorm_space,
    "gradvac": gradvac_space,
    "imtl": None,
    "imtl_l": None,
    "krum": krum_space,
    "logse": None,
    "mgda": mgda_space,
    "moco": moco_space,
    "modo": modo_space,
    "nash_mtl": nash_mtl_space,
    "orthogonal": orthogonal_space,
    "pbi": pbi_space,
    "pcgrad": None,
    "rgw": rgw_space,
    "rlw": rlw_space,
    "sdmgrad": sdmgrad_space,
    "slaw": slaw_space,
    "slw": slw_space,
    "softadapt": softadapt_space,
    "static": static_space,
    "stch": stch_space,
    "trimmed_mean": trimmed_mean_space,
    "upgrad": None,
    "uw": None,
}


# --- Architecture choices -----------------------------------------------


def shared_layers_choice(hp):
    """Sharing depth: the number of shared layers before the task heads."""
    return hp.Int("shared_layers", 1, 3, default=2)


def head_units_choice(hp):
    """Head width: the units of each task head's hidden layer."""
    return hp.Choice("head_units", [16, 32, 64], default=32)


def routing_sigma_choice(hp):
    """Task Routing sigma: the fraction of units each task switches off."""
    return hp.Choice("routing_sigma", [0.0, 0.25, 0.5, 0.75], default=0.5)


def aux_weight_choice(hp):
    """lambda_aux, the weight of the auxiliary module's losses."""
    return hp.Float("aux_weight", 0.05, 1.0, sampling="log", default=1.0)


#: Architecture keyword -> function(hp) -> value. Each hyperparameter is
#: named after its keyword.
ARCHITECTURE_SPACE = {
    "shared_layers": shared_layers_choice,
    "head_units": head_units_choice,
    "routing_sigma": routing_sigma_choice,
    "aux_weight": aux_weight_choice,
}

__all__ = ["ARCHITECTURE_SPACE", "DEFAULT_STRATEGIES", "SEARCH_SPACES"]
