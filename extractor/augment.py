"""Augmented views for the lighter workflow: `embed --views K` stores, besides each image's
plain row (view 0), K augmented views of it (views 1..K), so a head trained on features sees
augmented images too — the one advantage the full Keras workflow had.

The views are made from the decoded, resized pixels (decoding happens once per image),
seeded by (--seed, the file's sha256, view number): the same file always gets the same
views, whatever the batch, worker or run. The recipe is part of the store's fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageEnhance

from .errors import SettingError

AUGMENTATIONS = ("flip", "crop", "rotate", "color")


def parse_augment(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown or not names:
        raise SettingError(
            f"--augment {value}: choose among {', '.join(AUGMENTATIONS)} (comma-separated)"
        )
    return names


def recipe(views: int, augment: tuple[str, ...], seed: int) -> dict | None:
    """What the fingerprint records about views (None without views)."""
    if views == 0:
        return None
    return {"views": views, "augment": list(augment), "seed": seed, "version": 1}


def augmented_views(
    pixels: np.ndarray, count: int, augment: tuple[str, ...], seed: int, sha256: str
) -> Iterator[np.ndarray]:
    """`count` augmented copies of uint8 (S, S, C) `pixels`, reproducible for a file, made
    one at a time (a batch takes what it needs: memory follows the batch size, not --views)."""
    size, channels = pixels.shape[0], pixels.shape[-1]
    for view in range(1, count + 1):
        rng = np.random.default_rng([seed, int(sha256[:15], 16), view])
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        flip, scale = rng.random() < 0.5, rng.uniform(0.7, 1.0)
        left, top = rng.random(2)
        angle = rng.uniform(-15, 15)
        brightness, contrast, saturation = rng.uniform(0.75, 1.25, 3)
        if "flip" in augment and flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if "crop" in augment:  # a random square of 70-100% of the side, resized back
            side = max(1, round(size * scale))
            x, y = round(left * (size - side)), round(top * (size - side))
            image = image.resize(
                (size, size), Image.Resampling.BILINEAR, (x, y, x + side, y + side)
            )
        if "rotate" in augment:
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
        if "color" in augment:
            image = ImageEnhance.Brightness(image).enhance(brightness)
            image = ImageEnhance.Contrast(image).enhance(contrast)
            if channels == 3:
                image = ImageEnhance.Color(image).enhance(saturation)
        array = np.asarray(image, dtype=np.uint8)
        yield array[..., None] if channels == 1 else array
