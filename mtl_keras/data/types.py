"""What every dataset loads to: `Splits` of uint8 images and int32 fine / coarse labels, with `DatasetInfo`
(class names of both heads and the fine -> coarse map). numpy only, no TensorFlow."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]
    fine_to_coarse: tuple[int, ...]
    skipped_files: tuple[str, ...] = ()  # image files that could not be decoded (folder and csv datasets)

    @property
    def num_classes(self) -> dict[str, int]:
        return {"fine": len(self.fine_names), "coarse": len(self.coarse_names)}

    @property
    def class_names(self) -> dict[str, list[str]]:
        return {"fine": list(self.fine_names), "coarse": list(self.coarse_names)}


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C], or host_images.FileImages (decoded lazily, sliced without decoding)
    fine: np.ndarray  # int32 [N]
    coarse: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.fine)

    def take(self, index: np.ndarray | slice) -> "Split":
        return Split(self.images[index], self.fine[index], self.coarse[index])


@dataclasses.dataclass(frozen=True)
class Splits:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


@dataclasses.dataclass(frozen=True)
class Source:
    """What a source module's `load` returns: train and test, and val when the source defines its own."""
    info: DatasetInfo
    train: Split
    test: Split
    val: Split | None = None
