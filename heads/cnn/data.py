"""Images -> the tf.data pipelines train-cnn trains on.

The folder is read with embed's scan and decode rules (formats, EXIF, bad files skipped and
listed, Pillow's bomb limit), not `image_dataset_from_directory`, which stops on the first bad
file. Every image is decoded once, on worker threads, into a uint8 array memory-mapped from
disk (N x S x S x C bytes; the page cache keeps it in RAM when it fits); the tf.data pipeline
then shuffles indices, gathers batches from that array and prefetches, so epochs cost no
decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ...extractor.decode import DecodeError
from ...extractor.decode_pool import decode_in_order
from ...extractor.progress import Progress
from ...extractor.safe_files import OutputFolder
from ...extractor.scan import ImageFile
from ...extractor.settings import channels_of


@dataclass
class DecodedImages:
    pixels: np.ndarray  # uint8 (N, S, S, C), memory-mapped
    paths: list[str]
    labels: list[str | None]
    sha256s: list[str]
    errors: list[tuple[str, str]]  # (path, reason) of the files that could not be read


def decode_all(
    images: list[ImageFile],
    size: int,
    color_mode: str,
    cache: tuple[OutputFolder, str],
    workers: int | None = None,
    progress: bool = False,
) -> DecodedImages:
    """Decode every image into the array file `cache` (a folder and a name: the file is made
    anew there, never through a link); unreadable ones are listed, not kept."""
    shape = (len(images), size, size, channels_of(color_mode))
    folder, name = cache
    folder.remove_file(name)  # a killed run's pixels, or a link: never written through
    with folder.create_file(name) as handle:
        # Reserve the blocks now: a sparse file on a full disk would crash the process with
        # SIGBUS at the first write through the memory map; this raises ENOSPC instead.
        os.posix_fallocate(handle.fileno(), 0, max(1, int(np.prod(shape))))
        pixels = np.memmap(handle, dtype=np.uint8, mode="r+", shape=shape)
    kept: list[ImageFile] = []
    sha256s: list[str] = []
    errors: list[tuple[str, str]] = []
    with Progress(len(images), "decode", shown=progress) as bar:
        for image, outcome in decode_in_order(images, size, color_mode, workers):
            bar.update(1)
            if isinstance(outcome, DecodeError):
                errors.append((image.path, str(outcome)))
                continue
            pixels[len(kept)] = outcome.pixels
            kept.append(image)
            sha256s.append(outcome.sha256)
    pixels.flush()
    return DecodedImages(
        pixels[: len(kept)],
        [image.path for image in kept],
        [image.label for image in kept],
        sha256s,
        errors,
    )


def make_dataset(
    pixels: np.ndarray,
    y: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
):
    """A tf.data.Dataset of (float32 pixels in [0, 255], class index) batches over `rows`,
    reshuffled every epoch when `shuffle`, gathered in parallel and prefetched."""
    import tensorflow as tf

    shape = (None, *pixels.shape[1:])

    def gather(indices: np.ndarray):
        return pixels[indices].astype(np.float32), y[indices].astype(np.int64)

    def load(indices):
        images, labels = tf.numpy_function(gather, [indices], (tf.float32, tf.int64))
        return tf.ensure_shape(images, shape), tf.ensure_shape(labels, (None,))

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(rows, dtype=np.int64))
    if shuffle:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
