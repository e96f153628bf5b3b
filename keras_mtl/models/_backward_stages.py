"""A functional model's shared trunk cut into a chain of stages, so that the
per-task gradients can be taken one stage at a time, for all tasks in step.

The Gramian path (`compile(per_task_gradients="gramian")`) needs
G G^T = sum_v G_v G_v^T, where G_v holds the T per-task gradients of shared
variable v. Taking each task's gradient with one backward pass over the
whole trunk holds all T gradients of every variable until the last task's
pass is done: T * P numbers. Cut the trunk instead at tensors s_1, ..., s_K
that every path through it crosses (a *separator*: every other trunk tensor
is computed before it or from it). Then for every task t the backward pass
can stop at each cut: from the per-task cotangents d_k,t = dL_t / ds_k, one
backward pass through stage k alone gives the gradients of that stage's
variables and d_{k-1},t. Stage k's Gramian term is added, its (T, P_k)
gradients are freed, and only then does stage k - 1 begin. Memory then grows
with T times the largest stage's variables and cut activations, not with
T * P. Cuts are kept only where they make the largest stage smaller
(`_balanced_bounds`).

Each stage is its own functional model over the model's layers (no new
layers or variables), called under its own gradient tape, so that a
stage's backward pass walks that stage's operations only. The model orders
the stages with control dependencies (under XLA, its scheduler does).
"""

from __future__ import annotations

import dataclasses
import math

import keras

from keras_mtl.models.task_graph import _node_of, analyze_task_graph


@dataclasses.dataclass(frozen=True)
class BackwardStage:
    """One stage of the trunk.

    Attributes:
        model: functional model from the stage's input (the model inputs
            for the first stage, the previous stage's cut otherwise) to the
            stage's cut (unless it is the last stage), then the shared
            representation tensors made in the stage.
        has_cut_input: whether the input is the previous stage's cut.
        has_cut_output: whether the first output is the next stage's input.
        cut_representation: index in the shared representation of the cut
            when the cut is itself a representation tensor, else None.
        representations: indices in the shared representation of the
            remaining outputs.
        variables: indices in the shared variables of the stage's own.
    """

    model: keras.Model
    has_cut_input: bool
    has_cut_output: bool
    cut_representation: int | None
    representations: tuple
    variables: tuple


@dataclasses.dataclass(frozen=True)
class BackwardStages:
    """The trunk as stages (first to last) and the heads on top of them,
    which read `num_representations` shared representation tensors."""

    stages: tuple
    heads: keras.Model
    num_representations: int


def _parents(tensor):
    """The tensors `tensor` is computed from (none for a model input)."""
    if getattr(tensor, "_keras_history", None) is None:
        return []
    operation, node = _node_of(tensor)
    if isinstance(operation, keras.layers.InputLayer):
        return []
    return list(node.input_tensors)


def _ancestors(tensors):
    """{id(t): ids of the tensors t is computed from} for every tensor that
    `tensors` need, and {id(t): t}."""
    ancestors, by_id = {}, {}
    # Iterative post-order: a tensor's parents are done before it.
    stack = [(tensor, False) for tensor in tensors]
    while stack:
        tensor, parents_done = stack.pop()
        key = id(tensor)
        if key in ancestors:
            continue
        parents = _parents(tensor)
        if not parents_done:
            stack.append((tensor, True))
            stack.extend((p, False) for p in parents if id(p) not in ancestors)
            continue
        by_id[key] = tensor
        found = set()
        for parent in parents:
            found.add(id(parent))
            found |= ancestors[id(parent)]
        ancestors[key] = found
    return ancestors, by_id


def _is_float(tensor):
    return "float" in str(getattr(tensor, "dtype", ""))


def find_backward_stages(model, graph, batch_size=32):
    """The trunk of a functional model as a chain of stages, or None.

    Nested functional models (a `keras.applications` backbone used as one
    layer) are looked into: their layers are called again, directly, on
    the same inputs (new nodes on the same layers, no new variables), so
    that the trunk can be cut between them.

    Args:
        model: the functional model.
        graph: its `TaskGraph` (the shared variables' order).
        batch_size: examples per step, to weigh the per-task cotangents at
            a cut (batch_size times the cut's size) against the per-task
            gradients of the parameters it frees (see `_balanced_bounds`).

    Returns:
        A `BackwardStages` with at least two stages, or None when the trunk
        has no cut worth making (then a stage would be the whole trunk), when
        the heads read more than the shared representation, when a shared
        variable serves more than one stage or the heads, or when a task's
        own variable lies outside the heads (`set_variable_roles`).
    """
    inputs_struct, outputs_struct = model._inputs_struct, model._outputs_struct
    reps = list(graph.shared_representations)
    if not reps or not graph.shared_variables:
        return None
    if _has_nested_models(reps):
        try:
            outputs_struct = _flat_call(model, inputs_struct)
        except (ValueError, TypeError):
            return None
        tasks = {task: outputs_struct[task] for task in graph.task_variables}
        reps = analyze_task_graph(tasks, model.trainable_variables)
        reps = list(reps.shared_representations)
    ancestors, by_id = _ancestors(reps)
    inputs = {id(t) for t in keras.tree.flatten(inputs_struct)}
    rep_ids = [id(r) for r in reps]
    trunk = [key for key in by_id if key not in inputs]
    # Cuts: float tensors that every path from the inputs to the shared
    # representation crosses: every other tensor is computed before the cut
    # or from it, and every tensor computed from it reads nothing from
    # before it (no skip connection jumps over it).
    parents = {key: [id(p) for p in _parents(by_id[key])] for key in by_id}

    def is_cut(key):
        if not _is_float(by_id[key]):
            return False
        for other in by_id:
            if other == key or other in ancestors[key]:
                continue
            if key not in ancestors[other]:
                return False
            if any(p != key and key not in ancestors[p] for p in parents[other]):
                return False
        return True

    cuts = [key for key in trunk if is_cut(key)]
    # Every reachable tensor after a cut descends from it, so the cuts are
    # ordered by their number of ancestors.
    cuts.sort(key=lambda key: len(ancestors[key]))
    try:
        heads = keras.Model(list(reps), outputs_struct)
    except ValueError:
        return None
    # The heads must hold every task's own variable and no shared one.
    shared_index = {id(v): i for i, v in enumerate(graph.shared_variables)}
    in_heads = {id(v) for v in heads.trainable_variables}
    if in_heads & set(shared_index):
        return None
    if any(id(v) not in in_heads for vs in graph.task_variables.values() for v in vs):
        return None

    def before_or_at(key, cut):
        return key == cut or key in ancestors[cut]

    # The last cut needs something above it (else it ends the trunk).
    cuts = [c for c in cuts if any(c in ancestors[key] for key in rep_ids)]

    def build(start, end):
        members = [
            i
            for i, key in enumerate(rep_ids)
            if (start is None or not before_or_at(key, start))
            and (end is None or before_or_at(key, end))
        ]
        cut_rep = next((i for i in members if rep_ids[i] == end), None)
        members = tuple(i for i in members if rep_ids[i] != end)
        outputs = [reps[i] for i in members]
        if end is not None:
            outputs.insert(0, by_id[end])
        stage_inputs = inputs_struct if start is None else [by_id[start]]
        stage_model = keras.Model(stage_inputs, outputs)
        return BackwardStage(
            model=stage_model,
            has_cut_input=start is not None,
            has_cut_output=end is not None,
            cut_representation=cut_rep,
            representations=members,
            variables=tuple(
                sorted(shared_index.get(k, -1) for k in _variable_ids(stage_model))
            ),
        )

    def variables_between(start, end):
        """The trainable variables of the layers making the tensors after
        cut `start` (None: the inputs) up to cut `end` (None: the top)."""
        found = {}
        for key, tensor in by_id.items():
            if key in inputs or (start is not None and before_or_at(key, start)):
                continue
            if end is None or before_or_at(key, end):
                for variable in _node_of(tensor)[0].trainable_variables:
                    found[id(variable)] = variable
        return found.values()

    # The finest stages: one per cut with variables below it.
    bounds, sizes, start, owned = [None], [], None, set()
    for end in [*cuts, None]:
        new = [v for v in variables_between(start, end) if id(v) not in owned]
        if end is not None and not new:
            continue  # nothing to train here: merge into the next stage
        owned |= {id(v) for v in new}
        sizes.append(sum(math.prod(v.shape) for v in new))
        bounds.append(end)
        start = end
    cost = [0 if b is None else batch_size * _size(by_id[b]) for b in bounds]
    chosen = _balanced_bounds(sizes, cost)
    if len(chosen) < 3:
        return None
    try:
        stages = [build(bounds[i], bounds[j]) for i, j in zip(chosen, chosen[1:])]
    except ValueError:
        return None
    # Each shared variable in exactly one stage, and nothing else trained.
    seen = [i for stage in stages for i in stage.variables]
    if sorted(seen) != list(range(len(shared_index))):
        return None
    return BackwardStages(tuple(stages), heads, len(reps))


def _balanced_bounds(sizes, cut_costs):
    """Which stage bounds to keep, as indices into `cut_costs` (always the
    first and the last): the finest stages, with `sizes[k]` parameters
    between bounds k and k + 1, merged so that the largest stage's memory
    is smallest, then the stages are fewest.

    A stage from bound i to bound j holds T per-task gradients of its
    parameters and T per-task cotangents at both of its bounds, so its
    memory is T * (sum(sizes[i:j]) + cut_costs[i] + cut_costs[j]). One stage
    (no cut) is T * P: a cut pays only where the activations there are
    smaller than the parameters it lets go of (late layers of a CNN, not
    its early ones)."""
    n = len(sizes)
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    # best[j]: (largest stage, number of stages) over bounds 0..j; back[j]:
    # the bound before j.
    best, back = [(0, 0)] + [None] * n, [None] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            stage = prefix[j] - prefix[i] + cut_costs[i] + cut_costs[j]
            candidate = (max(best[i][0], stage), best[i][1] + 1)
            if best[j] is None or candidate < best[j]:
                best[j], back[j] = candidate, i
    chosen, j = [n], n
    while j:
        j = back[j]
        chosen.append(j)
    return chosen[::-1]


def _size(tensor):
    """Elements per example of a KerasTensor (unknown sizes counted as 64)."""
    return math.prod(64 if d is None else d for d in tuple(tensor.shape)[1:])


def _nested_model(operation):
    """The functional graph inside a nested model layer, else None."""
    if isinstance(operation, keras.Sequential):
        return getattr(operation, "_functional", None)
    if isinstance(operation, keras.Model) and hasattr(operation, "_run_through_graph"):
        if getattr(operation, "_outputs_struct", None) is not None:
            return operation
    return None


def _has_nested_models(tensors):
    _, by_id = _ancestors(tensors)
    for tensor in by_id.values():
        if getattr(tensor, "_keras_history", None) is not None:
            if _nested_model(_node_of(tensor)[0]) is not None:
                return True
    return False


def _flat_call(functional, inputs):
    """`functional`'s outputs for symbolic `inputs`, with every nested
    model's layers called one by one instead of the nested model."""

    def operation_fn(operation):
        nested = _nested_model(operation)
        if nested is None:
            return operation

        def call(*args, **kwargs):
            del kwargs  # training: the stage's call passes it to every layer
            return _flat_call(nested, args[0] if len(args) == 1 else list(args))

        return call

    return functional._run_through_graph(inputs, operation_fn=operation_fn)


def _variable_ids(model):
    return [id(v) for v in model.trainable_variables]
