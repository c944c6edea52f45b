"""train-cnn's settings: one frozen value with its defaults per architecture, checked
before any work (check_cnn_settings names the option and its allowed values)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...extractor.backbone import MIN_IMAGE_SIZE, parse_weights
from ...extractor.settings import (
    COLOR_MODES,
    DEFAULT_COLOR_MODE,
    MAX_IMAGE_SIZE,
    check_counts,
    check_dropout,
    check_range,
    check_training,
)
from ...extractor.tensorflow_needed import require_tensorflow
from ..errors import SettingError
from .model import ARCHS, CNN_PURPOSE, SimpleCNN

DEFAULT_IMAGE_SIZE = {"simple": 128, "inception": 299}
DEFAULT_DROPOUT = {"simple": 0.5, "inception": 0.2}
SIMPLE_OPTIONS = ("blocks", "filters", "convs_per_block", "dense", "batchnorm", "l2")


@dataclass(frozen=True)
class CnnSettings:
    arch: str = "simple"
    image_size: int | None = None  # None: 128 for simple, 299 for inception
    color_mode: str = DEFAULT_COLOR_MODE
    batch_size: int = 32
    # A ConvNet from scratch sits on a plateau for several epochs before it starts to learn:
    # on 320 generated 64 px shape images, patience 5 stopped it at chance (0.275, 7 epochs),
    # patience 10 reached 0.925 (bench/workflows.py).
    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    val_split: float = 0.2
    seed: int = 0
    augment: bool = True
    dropout: float | None = None  # None: 0.5 for simple, 0.2 for inception's head
    simple: SimpleCNN = field(default_factory=SimpleCNN)
    weights: str = "imagenet"  # inception only
    fine_tune_layers: int = 0
    fine_tune_lr: float = 1e-5
    tensorboard: bool = False

    @classmethod
    def from_options(cls, **options) -> CnnSettings:
        """The settings train-cnn's options give, the simple ConvNet's among them (blocks,
        filters, convs_per_block, dense, batchnorm, l2)."""
        simple = {key: options.pop(key) for key in SIMPLE_OPTIONS if key in options}
        return cls(simple=SimpleCNN(**simple), **options)

    def resolved(self) -> CnnSettings:
        """The settings with every default filled in (what model.json records)."""
        dropout = DEFAULT_DROPOUT[self.arch] if self.dropout is None else self.dropout
        return replace(
            self,
            image_size=DEFAULT_IMAGE_SIZE[self.arch]
            if self.image_size is None
            else self.image_size,
            dropout=dropout,
            simple=replace(self.simple, dropout=dropout),
        )


def check_cnn_settings(settings: CnnSettings) -> CnnSettings:
    """Fail before any work on settings that cannot work; returns them resolved."""
    if settings.arch not in ARCHS:
        raise SettingError(f"unknown --arch {settings.arch!r}; choose one of {', '.join(ARCHS)}")
    if settings.color_mode not in COLOR_MODES:
        raise SettingError(
            f"unknown --color-mode {settings.color_mode!r}; choose one of {', '.join(COLOR_MODES)}"
        )
    s = settings.resolved()
    check_training(
        epochs=s.epochs,
        patience=s.patience,
        lr=s.lr,
        batch_size=s.batch_size,
        val_split=s.val_split,
        seed=s.seed,
    )
    check_counts(
        {
            "--blocks": s.simple.blocks,
            "--filters": s.simple.filters,
            "--convs-per-block": s.simple.convs_per_block,
        }
    )
    if any(units < 1 for units in s.simple.dense):
        raise SettingError(f"--dense takes positive layer sizes, got {s.simple.dense}")
    check_dropout(s.dropout)
    check_range("--fine-tune-lr", s.fine_tune_lr, 0, 1, low_open=True)
    check_range("--l2", s.simple.l2, 0, 1)
    check_range("--image-size", s.image_size, 1, MAX_IMAGE_SIZE)
    if s.arch == "simple" and s.image_size < 2**s.simple.blocks:
        raise SettingError(
            f"--image-size {s.image_size} is too small for --blocks {s.simple.blocks}: each "
            f"block halves it, so it needs at least {2**s.simple.blocks}"
        )
    if s.arch == "inception":
        if s.image_size < MIN_IMAGE_SIZE:
            raise SettingError(
                f"--image-size {s.image_size} is too small; InceptionV3 needs at least "
                f"{MIN_IMAGE_SIZE}"
            )
        if s.color_mode != DEFAULT_COLOR_MODE:
            raise SettingError(
                "--arch inception takes --color-mode rgb (grayscale images are converted to RGB)"
            )
        parse_weights(s.weights, s.seed)
    check_range("--fine-tune-layers", s.fine_tune_layers, 0)
    if s.fine_tune_layers and s.arch != "inception":
        raise SettingError("--fine-tune-layers applies to --arch inception only")
    require_tensorflow(CNN_PURPOSE)
    return s
