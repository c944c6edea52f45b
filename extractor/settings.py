"""The values each setting may take, in one light module: the choices and defaults the CLI
offers and the library checks, and the numeric settings, each checked before any work
against the range where it can work (a value outside it is a SettingError naming the option,
the range and the value given). It imports nothing heavy, so the CLI reads it without
loading numpy, pyarrow or ONNX Runtime."""

from __future__ import annotations

import math
import os

from .errors import SettingError

MAX_SEED = 2**32 - 1  # what numpy, scikit-learn and Keras accept as a seed
MAX_IMAGE_SIZE = 2048  # 4 MP per image: far beyond what an ImageNet backbone was made for
MAX_WORKERS = 256
MAX_VIEWS = 64

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
# How a store keeps its features (embed --store-dtype): float16 halves the store; readers
# get float32 back. Not the network's arithmetic (--precision).
STORE_DTYPES = ("float32", "float16")
ENGINES = ("local", "ray")
COLOR_MODES = ("rgb", "grayscale")
DECODE_MODES = ("exact", "fast")  # fast: JPEG draft mode (--fast-decode)
# What an option left out means, and what a fingerprint written before the field existed
# meant by leaving it out
DEFAULT_PRECISION, DEFAULT_COLOR_MODE, DEFAULT_DECODE = "fp32", "rgb", "exact"
DEFAULT_BACKBONE = "inception_v3"  # also what a fingerprint without `backbone` means
DEFAULT_IMAGE_SIZE = 299  # InceptionV3's own
DEFAULT_AUGMENT = "flip,crop,rotate,color"


def channels_of(color_mode: str) -> int:
    """Image channels in a colour mode: 1 in grayscale, 3 in RGB."""
    return 1 if color_mode == "grayscale" else 3


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def available_memory_gb() -> float | None:
    """Memory this process could still take, GiB: the kernel's MemAvailable (plus free swap),
    narrowed by a cgroup v2 limit (a container's); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in meminfo}
        available = (fields["MemAvailable"] + fields.get("SwapFree", 0)) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
    cgroup = "/sys/fs/cgroup/"
    try:
        with open(cgroup + "memory.max") as limit, open(cgroup + "memory.current") as used:
            ceiling = limit.read().strip()
            if ceiling != "max":
                available = min(available, int(ceiling) - int(used.read()))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the machine's figure stands
    return available / 2**30


def default_workers() -> int:
    """One decode thread per usable core (at most 32): on GPU nodes decoding is the
    bottleneck, and on CPU nodes the decode threads run at the lowest priority, so they
    never slow the model."""
    return min(32, usable_cores())


def images_per_batch(at_299: int, image_size: int) -> int:
    """`at_299` images a batch at 299 px, as many pixels a batch at other sizes (never more
    images, at least one): a network's activations, and ONNX Runtime's memory for them,
    grow with the pixels of a batch."""
    return max(1, min(at_299, round(at_299 * 299 * 299 / (image_size * image_size))))


def check_range(
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` must lie between `low` and `high` (each excluded when open); None stands for
    a default chosen later and passes."""
    if value is None:
        return
    finite = not isinstance(value, float) or math.isfinite(value)
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    if not (finite and above and below):
        raise SettingError(
            f"{name} must be {describe(low, high, low_open, high_open)}, got {value}"
        )


def describe(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> str:
    """A range in words: 'at least 1', 'more than 0', 'from 0 to 64', 'in [0, 1)'."""
    low_text, high_text = _number(low), _number(high)
    if high is None:
        return f"more than {low_text}" if low_open else f"at least {low_text}"
    if low is None:
        return f"less than {high_text}" if high_open else f"at most {high_text}"
    if not low_open and not high_open:
        return f"from {low_text} to {high_text}"
    return f"in {'(' if low_open else '['}{low_text}, {high_text}{')' if high_open else ']'}"


def _number(value: float | None) -> str:
    if value is None or float(value).is_integer():
        return str(int(value or 0))
    return f"{value:g}"


def check_seed(seed: int) -> None:
    check_range("--seed", seed, 0, MAX_SEED)


def check_workers(workers: int | None) -> None:
    check_range("--workers", workers, 1, MAX_WORKERS)


def check_counts(counts: dict[str, int | None]) -> None:
    """Each named count must be at least 1; None stands for a default chosen later."""
    for name, value in counts.items():
        check_range(name, value, 1)


def check_training(
    *, epochs: int, patience: int, lr: float, batch_size: int, val_split: float | None, seed: int
) -> None:
    """The settings every Keras training shares (train --head mlp, train-cnn); a
    `val_split` of None is checked by the caller."""
    check_range("--val-split", val_split, 0, 1, low_open=True, high_open=True)
    check_seed(seed)
    check_counts({"--epochs": epochs, "--batch-size": batch_size})
    check_range("--patience", patience, 0)
    check_range("--lr", lr, 0, 1, low_open=True)


def check_dropout(dropout: float) -> None:
    check_range("--dropout", dropout, 0, 1, high_open=True)
