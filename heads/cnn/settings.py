"""train-cnn's settings: one frozen value with its defaults per architecture, checked
before any work (check_cnn_settings names the option and its allowed values)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...extractor.applications import application
from ...extractor.backbone import parse_weights
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
from .model import ARCH_ALIASES, ARCHS, AUGMENTATIONS, CNN_PURPOSE, SimpleCNN

SIMPLE_IMAGE_SIZE = 128  # a backbone's default: the size it was trained at
DEFAULT_DROPOUT = {"simple": 0.5, "backbone": 0.2}  # a backbone's: its new head's
SIMPLE_OPTIONS = ("blocks", "filters", "convs_per_block", "dense", "batchnorm", "l2")


@dataclass(frozen=True)
class CnnSettings:
    arch: str = "simple"
    image_size: int | None = None  # None: 128 for simple, a backbone's own (299 inception)
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
    augment: str = "auto"  # auto: chosen from the images (auto_augment)
    dropout: float | None = None  # None: 0.5 for simple, 0.2 for a backbone's head
    simple: SimpleCNN = field(default_factory=SimpleCNN)
    weights: str = "imagenet"  # backbones only
    fine_tune_layers: int = 0
    fine_tune_lr: float = 1e-5
    tensorboard: bool = False
    # filled in by resolved(): each default chosen from the data, {option: {value, because}}
    chosen: dict | None = None

    @classmethod
    def from_options(cls, **options) -> CnnSettings:
        """The settings train-cnn's options give, the simple ConvNet's among them (blocks,
        filters, convs_per_block, dense, batchnorm, l2)."""
        simple = {key: options.pop(key) for key in SIMPLE_OPTIONS if key in options}
        return cls(simple=SimpleCNN(**simple), **options)

    def resolved(self) -> CnnSettings:
        """The settings with every default filled in and the arch's own name (what
        model.json records)."""
        arch = ARCH_ALIASES.get(self.arch, self.arch)
        simple = arch == "simple"
        dropout = self.dropout
        if dropout is None:
            dropout = DEFAULT_DROPOUT["simple" if simple else "backbone"]
        image_size = self.image_size
        if image_size is None:
            image_size = SIMPLE_IMAGE_SIZE if simple else application(arch).size
        chosen = {}
        augment = self.augment
        if augment == "auto":
            augment, because = auto_augment(image_size, self.color_mode)
            chosen["augment"] = {"value": augment, "because": because}
        return replace(
            self,
            augment=augment,
            chosen=chosen,
            arch=arch,
            image_size=image_size,
            dropout=dropout,
            simple=replace(self.simple, dropout=dropout),
        )

    @property
    def is_backbone(self) -> bool:
        """Whether the arch is an ImageNet network (fine-tuned) rather than `simple`."""
        return self.arch != "simple"


def check_cnn_settings(settings: CnnSettings) -> CnnSettings:
    """Fail before any work on settings that cannot work; returns them resolved."""
    if settings.arch not in ARCHS:
        raise SettingError(
            f"unknown --arch {settings.arch!r}; choose simple, or a backbone as `embed "
            f"--backbone` takes it: {', '.join(ARCHS[1:])} (`headstart backbones` shows them)"
        )
    if settings.color_mode not in COLOR_MODES:
        raise SettingError(
            f"unknown --color-mode {settings.color_mode!r}; choose one of {', '.join(COLOR_MODES)}"
        )
    if settings.augment not in ("auto", *AUGMENTATIONS):
        raise SettingError(
            f"unknown --augment {settings.augment!r}; choose one of auto, "
            f"{', '.join(AUGMENTATIONS)}"
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
    if s.is_backbone:
        _check_backbone(s, settings.arch)
    check_range("--fine-tune-layers", s.fine_tune_layers, 0)
    if s.fine_tune_layers and not s.is_backbone:
        raise SettingError(
            "--fine-tune-layers applies to a backbone's --arch (inception, resnet50, ...), "
            "not to --arch simple"
        )
    require_tensorflow(CNN_PURPOSE)
    return s


def _check_backbone(s: CnnSettings, given: str) -> None:
    """`given`: the name the user gave (inception, which is inception_v3)."""
    app = application(s.arch)
    if app.fixed_size and s.image_size != app.size:
        raise SettingError(
            f"--arch {given} takes --image-size {app.size} only: its weights are made for that size"
        )
    if s.image_size < app.min_size:
        raise SettingError(
            f"--image-size {s.image_size} is too small; {app.constructor} needs at least "
            f"{app.min_size}"
        )
    if s.color_mode != DEFAULT_COLOR_MODE:
        raise SettingError(
            f"--arch {given} takes --color-mode rgb (grayscale images are converted to RGB)"
        )
    parse_weights(s.weights, s.seed)


# Colour images up to this size get light augmentation under --augment auto: the largest
# size bench/cnn_defaults.py measured
LIGHT_AUGMENT_MAX_SIZE = 96


def auto_augment(image_size: int, color_mode: str) -> tuple[str, str]:
    """--augment auto: (the level, why). Measured by bench/cnn_defaults.py against a plain
    Keras ConvNet on 28 px grayscale digits and 32 px shapes and photo crops (3 seeds each)
    and on 96 px photo crops: light augmentation (small zooms and shifts) beat both the full
    set (flips, rotations of up to 36 degrees, contrast, brightness: 4-13 points lower at
    seed 0) and light plus flips (geometric), wherever measured. Grayscale images (digits,
    glyphs, scans) get light at any size: flips and rotations can change their class.
    Colour images larger than measured, photos, keep the full set that was the default
    before."""
    if color_mode == "grayscale":
        return "light", "grayscale images: flips and rotations can change their class"
    if image_size <= LIGHT_AUGMENT_MAX_SIZE:
        return "light", f"{image_size} px colour images, at most {LIGHT_AUGMENT_MAX_SIZE}"
    return "full", f"{image_size} px colour images, larger than {LIGHT_AUGMENT_MAX_SIZE}"
