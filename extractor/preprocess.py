"""Preprocess stage: uint8 RGB pixels -> the float32 input InceptionV3 was trained on.

Same operations, in the same order and precision, as
`keras.applications.inception_v3.preprocess_input` (x /= 127.5; x -= 1), so the values are
bit-identical to the Keras pipeline's.
"""

from __future__ import annotations

import numpy as np


def preprocess(images: list[np.ndarray]) -> np.ndarray:
    """List of (s, s, 3) uint8 arrays -> float32 (N, s, s, 3) in [-1, 1]."""
    batch = np.stack(images).astype(np.float32)
    batch /= 127.5
    batch -= 1.0
    return batch
