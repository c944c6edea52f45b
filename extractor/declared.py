"""Values declared by files from outside (a store's fingerprint, head.json, model.json),
checked before any work: stores, heads and models travel between people, and a number read
from one decides how much memory a run takes. A wrong value is an error naming the file,
the field and what it may be, never a crash or a run that allocates gigabytes.

Ranges are the ones the command-line options accept (settings.py), so anything headstart
writes passes; unknown fields are let through (a newer headstart may add some).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .applications import APPLICATIONS
from .settings import (
    COLOR_MODES,
    DECODE_MODES,
    DEFAULT_BACKBONE,
    MAX_IMAGE_SIZE,
    MAX_SEED,
    MAX_VIEWS,
    PRECISIONS,
    STORE_DTYPES,
)

MAX_DIM = 1 << 16  # features per image; InceptionV3 gives 2048
MAX_CLASSES = 100_000
MAX_NAME = 1024  # characters in a class name; a folder name has at most 255 bytes

Check = Callable[[Any], str | None]  # a value -> None when it is fine, else what it must be


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"an integer from {low} to {high}"
        return None

    return check


def one_of(names: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in names else f"one of {', '.join(names)}"

    return check


def text(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def views_recipe(value: Any) -> str | None:
    """None (no views) or what augment.recipe records."""
    if value is None:
        return None
    wanted = f"null or an object with views (1 to {MAX_VIEWS}), augment, seed and version"
    if not isinstance(value, dict):
        return wanted
    augment = value.get("augment")
    if integer(1, MAX_VIEWS)(value.get("views")) or integer(0, MAX_SEED)(value.get("seed")):
        return wanted
    if not (isinstance(augment, list) and all(isinstance(step, str) for step in augment)):
        return wanted
    return None


# What each fingerprint field may be; (field, check, required)
FINGERPRINT_FIELDS: tuple[tuple[str, Check, bool], ...] = (
    ("backbone", text, False),  # inception_v3 where it is left out
    ("image_size", integer(1, MAX_IMAGE_SIZE), True),
    ("dim", integer(1, MAX_DIM), True),
    ("weights", text, False),
    ("weights_sha256", text, False),
    ("preprocessing", text, False),
    ("pooling", text, False),
    ("precision", one_of(PRECISIONS), False),
    ("decode", one_of(DECODE_MODES), False),
    ("color_mode", one_of(COLOR_MODES), False),
    ("views", views_recipe, False),
    ("extractor_version", integer(0, 1 << 30), False),
    ("store_dtype", one_of(STORE_DTYPES), False),
)


def check_fingerprint(fingerprint: Any, where: str) -> dict[str, Any]:
    """`fingerprint` if every field is what it may be; else a ValueError naming `where`
    (the file and the key path it was read from) and the field."""
    if not isinstance(fingerprint, dict):
        raise ValueError(f"{where} must be an object, got {_kind(fingerprint)}")
    if "backbone" not in fingerprint:  # written before other backbones came
        fingerprint = {"backbone": DEFAULT_BACKBONE, **fingerprint}
    _check_fields(fingerprint, FINGERPRINT_FIELDS, where)
    known = APPLICATIONS.get(fingerprint["backbone"])
    smallest = known.min_size if known else 1
    if fingerprint["image_size"] < smallest:
        raise ValueError(
            f"{where}.image_size must be at least {smallest} for {fingerprint['backbone']} "
            f"(its smallest input), got {fingerprint['image_size']}"
        )
    return fingerprint


def check_classes(classes: Any, where: str) -> list[str]:
    """At least two distinct class names (a one-class classifier predicts nothing), each a
    name a folder could have: 1 to MAX_NAME characters of text that UTF-8 can write."""
    if not (
        isinstance(classes, list)
        and 2 <= len(classes) <= MAX_CLASSES
        and all(is_name(name) for name in classes)
        and len(set(classes)) == len(classes)
    ):
        raise ValueError(
            f"{where} must be a list of 2 to {MAX_CLASSES} distinct class names (text of 1 to "
            f"{MAX_NAME} characters)"
        )
    return classes


def is_name(name: Any) -> bool:
    """Text that can name a class: not empty, not huge, no lone surrogate (which no file,
    CSV or terminal can hold)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


CNN_INPUT_FIELDS: tuple[tuple[str, Check, bool], ...] = (
    ("image_size", integer(1, MAX_IMAGE_SIZE), True),
    ("color_mode", one_of(COLOR_MODES), True),
)


def check_cnn_input(model_input: Any, where: str) -> dict[str, Any]:
    if not isinstance(model_input, dict):
        raise ValueError(f"{where} must be an object, got {_kind(model_input)}")
    _check_fields(model_input, CNN_INPUT_FIELDS, where)
    return model_input


def _check_fields(values: dict, fields: tuple[tuple[str, Check, bool], ...], where: str) -> None:
    for name, check, required in fields:
        if name not in values:
            if required:
                raise ValueError(f"{where} lacks {name}")
            continue
        wanted = check(values[name])
        if wanted:
            raise ValueError(f"{where}.{name} must be {wanted}, got {_shown(values[name])}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list"}.get(type(value)) or _shown(value)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
