"""A keras-hub transformer as the shared trunk of three token taggers.

Token tagging on the Turkish treebank (`keras_mtl.datasets.turkish_treebank`,
gold CoNLL-U files of the PyPI package `turkish-treebanks`): every word gets
its universal part of speech ("upos"), its language-specific part of speech
("xpos") and its dependency relation ("deprel"). A `keras_hub.models.
BertBackbone` reads the sentence; one dense head per task reads its
"sequence_output" (`MultiTaskModel.from_trunk(..., trunk_output=
"sequence_output")`), and `--strategy` combines the tasks. The script prints
the test accuracy of each task (padding excluded).

From scratch (the default) the backbone is built from its config, small
(`--num_layers`, `--hidden_dim`, ...), over the treebank's own word
vocabulary: nothing is downloaded.

With pretrained weights: `--preset=/path/to/folder`, a keras-hub preset
folder on disk (what `backbone.save_to_preset(folder)` and
`tokenizer.save_to_preset(folder)` write, or a downloaded preset copied
there). The backbone and its tokenizer load from it; each word is then
represented by the first word piece the preset's tokenizer gives it, so that
labels stay one per word (a simplification: a full word-piece alignment
would read every piece). The script never downloads a preset itself.

    bash scripts/fetch_data.sh        # once; says where the data went
    pip install -e ".[examples,hub]"
    KERAS_MTL_DATA_DIR=data python examples/treebank_hub_trunk.py
    python examples/treebank_hub_trunk.py --strategy=upgrad --epochs=4
    python examples/treebank_hub_trunk.py --preset=$HOME/presets/bert_tiny_en_uncased
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.datasets import turkish_treebank  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", ["upos", "xpos", "deprel"], "Tagging tasks.")
flags.DEFINE_string("strategy", "ew", "A registered keras_mtl strategy name.")
flags.DEFINE_string(
    "preset",
    "",
    "A keras-hub preset folder on disk (empty: a small BERT from scratch).",
)
flags.DEFINE_integer("num_layers", 2, "Transformer layers (from scratch).")
flags.DEFINE_integer("num_heads", 4, "Attention heads (from scratch).")
flags.DEFINE_integer("hidden_dim", 128, "Hidden size (from scratch).")
flags.DEFINE_integer("intermediate_dim", 256, "Feed-forward size (from scratch).")
flags.DEFINE_integer("max_length", 64, "Words per sentence (longer are cut).")
flags.DEFINE_integer("epochs", 4, "Training epochs.")
flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of the shuffling and the weights.")
flags.DEFINE_string(
    "data_dir", None, "Folder holding turkish-treebank/ (default: the search order)."
)
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")


def require_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise SystemExit(
            "This example needs keras-hub: pip install 'keras-mtl[hub]'."
        ) from error
    return keras_hub


"""
## The trunk

From scratch: a `BertBackbone` over the treebank's word ids (id 0 is padding).
From a preset: the preset's backbone, and a table that maps each treebank
word id to the first word piece of that word under the preset's tokenizer.
"""


def build_trunk(keras_hub, vocabulary):
    """`(backbone, word_to_piece)`: word_to_piece maps treebank word ids to
    the backbone's token ids (None: the identity)."""
    if not FLAGS.preset:
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=vocabulary.num_tokens,
            num_layers=FLAGS.num_layers,
            num_heads=FLAGS.num_heads,
            hidden_dim=FLAGS.hidden_dim,
            intermediate_dim=FLAGS.intermediate_dim,
            max_sequence_length=FLAGS.max_length,
        )
        return backbone, None
    if not os.path.isdir(FLAGS.preset):
        raise SystemExit(
            f"--preset={FLAGS.preset!r} is not a folder: pass a keras-hub preset "
            "folder on disk (this example never downloads one)."
        )
    backbone = keras_hub.models.Backbone.from_preset(FLAGS.preset)
    longest = getattr(backbone, "max_sequence_length", None)
    if longest is not None and FLAGS.max_length > longest:
        raise SystemExit(
            f"--max_length={FLAGS.max_length} is longer than the preset's "
            f"max_sequence_length={longest}: pass --max_length={longest} or less."
        )
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(FLAGS.preset)
    unknown = unknown_id(tokenizer)
    pieces = [0]  # padding stays 0
    for form in vocabulary.tokens[1:]:
        ids = keras.ops.convert_to_numpy(tokenizer(form)).reshape(-1)
        pieces.append(int(ids[0]) if ids.size else unknown)
    return backbone, np.asarray(pieces, "int32")


def unknown_id(tokenizer):
    """The id of the tokenizer's unknown-word token (word-piece tokenizers
    call it `oov_token`, others `unknown_token`), 0 when it has none."""
    for attribute in ("oov_token", "unknown_token"):
        token = getattr(tokenizer, attribute, None)
        if token:
            return int(tokenizer.token_to_id(token))
    return 0


def backbone_inputs(tokens, word_to_piece):
    """The backbone's input dict from a batch of treebank word ids."""
    import tensorflow as tf

    padding_mask = tokens != 0
    if word_to_piece is not None:
        tokens = tf.gather(word_to_piece, tokens)
    return {
        "token_ids": tokens,
        "segment_ids": tf.zeros_like(tokens),
        "padding_mask": padding_mask,
    }


def load_data(vocabulary, word_to_piece):
    common = dict(
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        tasks=FLAGS.tasks,
        max_length=FLAGS.max_length,
        vocabulary=vocabulary,
        data_dir=FLAGS.data_dir,
    )
    return {
        split: turkish_treebank.load(split, **common).map(
            lambda x, y, w: (backbone_inputs(x, word_to_piece), y, w)
        )
        for split in ("train", "dev", "test")
    }


def main(argv):
    del argv
    start = time.time()
    keras_hub = require_keras_hub()
    keras.utils.set_random_seed(FLAGS.seed)
    vocabulary = turkish_treebank.build_vocabulary(data_dir=FLAGS.data_dir)
    backbone, word_to_piece = build_trunk(keras_hub, vocabulary)
    splits = load_data(vocabulary, word_to_piece)
    heads = {
        task: keras.layers.Dense(vocabulary.num_classes(task), name=task)
        for task in FLAGS.tasks
    }
    model = keras_mtl.MultiTaskModel.from_trunk(
        backbone, heads, trunk_output="sequence_output", name="hub_tagger"
    )
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss={task: loss for task in FLAGS.tasks},
        loss_weighting=FLAGS.strategy,
        weighted_metrics={task: ["accuracy"] for task in FLAGS.tasks},
        jit_compile=FLAGS.jit_compile,
    )
    source = f"preset {FLAGS.preset}" if FLAGS.preset else "built from its config"
    print(
        f"Turkish treebank: {vocabulary.num_tokens} word forms; trunk "
        f"{type(backbone).__name__} ({source}), {backbone.count_params()} "
        f"parameters, {len(model.shared_variables)} shared variables; heads "
        + ", ".join(f"{t} ({vocabulary.num_classes(t)} labels)" for t in FLAGS.tasks)
        + f"; strategy {FLAGS.strategy!r}."
    )
    model.fit(
        splits["train"],
        validation_data=splits["dev"],
        epochs=FLAGS.epochs,
        verbose=FLAGS.verbose,
        shuffle=False,  # the pipeline reshuffles itself every epoch
    )
    result = model.evaluate(splits["test"], verbose=0, return_dict=True)
    print("\nTest token accuracy per task (padding excluded)")
    for task in FLAGS.tasks:
        print(f"{task:<8} {result[f'{task}_accuracy']:.4f}")
    print(f"Wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
