"""Small labelled image sets made on the spot, for `headstart demo`, the tests and benchmarks.

Each class is a shape (circle, square, triangle, ...) drawn in random colours, sizes and
positions on a noisy background, saved as JPEG and PNG of varied sizes: easy to tell apart,
different enough from image to image that a classifier has something to learn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .safe_files import OutputFolder

SHAPES = ("circle", "square", "triangle", "cross")


def make_sample_images(
    folder: str | os.PathLike,
    classes: int = 3,
    per_class: int = 20,
    seed: int = 0,
    size_range: tuple[int, int] = (96, 320),
) -> Path:
    """Write `per_class` images for each of `classes` shapes under folder/<shape>/."""
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be between 1 and {len(SHAPES)}")
    rng = np.random.default_rng(seed)
    with OutputFolder(folder) as root:
        for shape in SHAPES[:classes]:
            with root.subfolder(shape) as class_folder:
                for index in range(per_class):
                    image = draw_shape(shape, rng, size_range)
                    image_format = "PNG" if index % 4 == 3 else "JPEG"
                    name = f"{shape}_{index:04d}.{'png' if image_format == 'PNG' else 'jpg'}"
                    with class_folder.writing(name) as handle:
                        image.save(handle, format=image_format)
    return Path(folder)


def draw_shape(shape: str, rng: np.random.Generator, size_range=(96, 320)) -> Image.Image:
    width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    radius = side * rng.uniform(0.2, 0.4)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    cy = height / 2 + rng.uniform(-0.1, 0.1) * height
    colour = tuple(int(v) for v in (255 - background + rng.integers(-40, 41, 3)) % 256)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour
        )
    else:
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=colour)
    return image
