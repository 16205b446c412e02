"""What every task's data module shares: where the data comes from, samplers and loaders."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from datasets.distributed import split_dataset_by_node
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from focalbench.data.images import ImageDecodeError, open_image, read_rgb
from focalbench.data.sources import DataSourceError, num_examples
from focalbench.errors import ConfigError
from focalbench.models.contract import IMAGENET_NORMALIZATION, Normalization

log = logging.getLogger(__name__)

# Lightning warns about any IterableDataset with a length; ours (SizedStream) gives it on purpose, and `datasets`
# hands each loader worker its own shards, so the length holds with several workers.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class BaseDataModule(LightningDataModule):
    """Loaders with the settings a training job wants by default.

    Samplers are made here, not by Lightning: training shuffles by ``seed`` + epoch (the same order after a resume
    from ``last.ckpt``), each DDP rank reading its own shard; evaluation splits the data across ranks without the
    padding duplicates of ``DistributedSampler``, so a 2-process validation counts every sample exactly once.

    Args:
        root: local data (layout depends on the task), ``demo`` for the embedded demo data, or None to use
            ``dataset``.
        dataset: a Hugging Face hub id (or a ``datasets`` builder name).
        batch_size: per-process batch size.
        num_workers: loader worker processes (persistent, pinned memory on CUDA).
        image_size: train crop / evaluation size.
        predict_root: a folder of images for ``predict``.
        seed: shuffling and hold-out split seed.
    """

    def __init__(
        self,
        root: str | None = None,
        dataset: str | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 224,
        predict_root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = root
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.predict_root = predict_root
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None  # the data's own test split, when it has one
        self.skipped_predict: list[str] = []  # unreadable predict inputs left out (skip_corrupt)
        self.split_names: dict[str, str] = {}  # "val"/"test" -> the data's split name (none: a hold-out)

    skip_corrupt = False  # data modules offering ``data.skip_corrupt`` set it from their argument

    demo_subdir = ""  # where this task's part of the embedded demo data lives

    @property
    def data_root(self) -> str | None:
        """``root``, with ``demo`` resolved to the embedded demo data (generated and cached on first use)."""
        if self.root != "demo":
            return self.root
        from focalbench.data.demo import demo_root

        return str(demo_root() / self.demo_subdir)

    @property
    def normalization(self) -> Normalization:
        """The model's input mean / std (``BaseTask.normalization``, read off its backbone) once the trainer holds
        the model; ImageNet's for a data module used on its own."""
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        return getattr(module, "normalization", IMAGENET_NORMALIZATION)

    @property
    def image_normalization(self) -> Normalization:
        """The mean / std the loaded images carry (what pictures undo to show them); detection's stay in [0, 1]."""
        return self.normalization

    def prepare_data(self) -> None:
        """Open the data for the run's stage before the Trainer makes the logger's ``version_N`` folder (Lightning
        calls this first, on one process a node): a missing or unreachable data set then stops the run with its
        one-line error and leaves no empty run folder behind. ``setup`` keeps what this built and, on the other
        processes, builds its own."""
        trainer = getattr(self, "trainer", None)
        stage = trainer.state.fn if trainer is not None else None
        self.setup(stage.value if stage is not None else None)

    # ---------------------------------------------------------------- loaders
    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, train: bool, collate_fn: Callable | None = None) -> DataLoader:
        world, rank = self._replicas()
        if isinstance(dataset, IterableDataset):
            return self._stream_loader(dataset, train, collate_fn, world, rank)
        if train:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        else:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        drop_last = train and len(dataset) >= self.batch_size * world
        return DataLoader(dataset, sampler=sampler, drop_last=drop_last, **self._loader_options(collate_fn))

    def _loader_options(self, collate_fn: Callable | None) -> dict:
        """What every loader shares: batch size, persistent workers with 4 batches prefetched each, pinned memory
        when a GPU is there."""
        workers = self.num_workers
        return {
            "batch_size": self.batch_size,
            "num_workers": workers,
            "collate_fn": collate_fn,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": workers > 0,
            "prefetch_factor": 4 if workers > 0 else None,
        }

    def _stream_loader(
        self, dataset: IterableDataset, train: bool, collate_fn: Callable | None, world: int, rank: int
    ) -> DataLoader:
        """A streamed data set: each rank reads its own shard (``split_dataset_by_node``); training shuffles with a
        buffer, reseeded per epoch by the task (``set_epoch``)."""
        examples = num_examples(dataset)
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
        if train:
            dataset = dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            if examples is not None:  # the steps an epoch are then known: lr schedule, progress bar, epochs
                dataset = SizedStream(dataset, examples // world)
        return DataLoader(dataset, drop_last=train, **self._loader_options(collate_fn))

    shuffle_buffer = 1000  # streamed training data: examples held for shuffling

    def collate_fn(self) -> Callable | None:
        """The batch collation; the default stacks tensors (detection overrides it)."""
        return None

    def eval_collate_fn(self) -> Callable | None:
        """The batch collation of validation, test and predict (segmentation keeps original sizes in lists)."""
        return self.collate_fn()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True, collate_fn=self.collate_fn())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False, collate_fn=self.eval_collate_fn())

    def test_dataloader(self) -> DataLoader:
        """The data's test split when it has one, else the validation split; one line says which is scored."""
        if self.test_set is not None:
            name = self.split_names.get("test", "test")
            rank_zero_info(f"test: scoring the '{name}' split ({_count(self.test_set)})")
            return self._loader(self.test_set, train=False, collate_fn=self.eval_collate_fn())
        name = self.split_names.get("val")
        which = f"'{name}'" if name else "(held out from the training data)"
        rank_zero_info(
            f"test: the data has no test split: scoring the validation split {which} ({_count(self.val_set)})"
        )
        return self.val_dataloader()

    def predict_set(self, dataset_class: type[ImageFolderForPredict] | None = None, **kwargs) -> ImageFolderForPredict:
        """The images under ``predict_root`` (``dataset_class``, default :class:`ImageFolderForPredict`), without the
        unreadable ones when ``skip_corrupt`` is set (kept in ``skipped_predict`` for ``skipped.txt``)."""
        if self.predict_root is None:
            raise ConfigError("predict needs data.predict_root: a folder of images")
        dataset = (dataset_class or ImageFolderForPredict)(
            self.predict_root, self.eval_transform(), skip_corrupt=self.skip_corrupt, **kwargs
        )
        self.skipped_predict = [str(path) for path in dataset.skipped]
        return dataset

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set(), train=False, collate_fn=self.eval_collate_fn())

    def eval_transform(self) -> Callable:
        raise NotImplementedError


class SizedStream(IterableDataset):
    """A streamed data set with the length its metadata gives (per process), so that Lightning knows the batches
    an epoch; iteration, ``set_epoch`` and every other attribute are the wrapped stream's. Training stops each
    process after the same number of batches (``length // batch_size``), which keeps DDP ranks in step."""

    def __init__(self, stream: IterableDataset, length: int) -> None:
        self.stream = stream
        self.length = length

    def __iter__(self):
        return iter(self.stream)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __getattr__(self, name: str):
        if name == "stream":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.stream, name)


class ImageFolderForPredict(Dataset):
    """Every image under a folder (recursively, sorted), as ``{"image", "path", "size"}`` for ``predict``.

    With ``skip_corrupt`` every file is decoded once up front and the unreadable ones are left out (``skipped``),
    each named in a warning; without it the first unreadable file stops the run with an :class:`ImageDecodeError`
    naming it.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable, skip_corrupt: bool = False) -> None:
        self.paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DataSourceError(f"data.predict_root '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.transform = transform
        self.skipped: list[Path] = []
        if skip_corrupt:
            readable = {path: _readable(path) for path in self.paths}
            self.skipped = [path for path, ok in readable.items() if not ok]
            self.paths = [path for path, ok in readable.items() if ok]
            if not self.paths:
                count = len(self.skipped)
                raise ImageDecodeError(f"none of the {count} images under data.predict_root '{root}' is readable")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = read_rgb(self.paths[index])
        return {
            "image": self.transform(image=image)["image"],
            "path": str(self.paths[index]),
            "size": torch.tensor(image.shape[:2]),
        }


def _count(dataset: Dataset | None) -> str:
    return f"{len(dataset)} samples" if hasattr(dataset, "__len__") else "streamed"


def _readable(path: Path) -> bool:
    try:
        open_image(path)
    except ImageDecodeError as err:
        _warn_skipped(err)
        return False
    return True


@rank_zero_only
def _warn_skipped(err: ImageDecodeError) -> None:
    log.warning("skipping unreadable image (data.skip_corrupt): %s", err)
