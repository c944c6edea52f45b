"""No traceback: every setting out of its range is one `Error:` line naming it, before any
work, and nothing is written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main
from tests.corpus import colour_images


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


OUT_OF_RANGE = [
    (("embed", "{images}", "-o", "{out}", "--seed", -1),
     "--seed must be from 0 to 4294967295, got -1"),
    (("embed", "{images}", "-o", "{out}", "--image-size", 0),
     "--image-size 0 is too small; InceptionV3 needs at least 75"),
    (("embed", "{images}", "-o", "{out}", "--image-size", 4096),
     "--image-size must be from 1 to 2048, got 4096"),
    (("embed", "{images}", "-o", "{out}", "--workers", 0),
     "--workers must be from 1 to 256, got 0"),
    (("embed", "{images}", "-o", "{out}", "--workers", 100000),
     "--workers must be from 1 to 256, got 100000"),
    (("embed", "{images}", "-o", "{out}", "--views", 100000),
     "--views must be from 0 to 64, got 100000"),
    (("embed", "{images}", "-o", "{out}", "--rows-per-part", 0),
     "--rows-per-part must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--seed", -1),
     "--seed must be from 0 to 4294967295, got -1"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--epochs", 0),
     "--epochs must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--hidden", 0),
     "--hidden must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--dropout", 1.5),
     "--dropout must be in [0, 1), got 1.5"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--lr", "nan"),
     "--lr must be in (0, 1], got nan"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--lr", 0),
     "--lr must be in (0, 1], got 0.0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--batch-size", 0),
     "--batch-size must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--patience", -1),
     "--patience must be at least 0, got -1"),
    (("train-cnn", "{images}", "-o", "{out}", "--image-size", 0),
     "--image-size must be from 1 to 2048, got 0"),
    (("train-cnn", "{images}", "-o", "{out}", "--seed", -1),
     "--seed must be from 0 to 4294967295, got -1"),
    (("train-cnn", "{images}", "-o", "{out}", "--lr", "inf"), "--lr must be in (0, 1], got inf"),
    (("train-cnn", "{images}", "-o", "{out}", "--l2", -1), "--l2 must be from 0 to 1, got -1.0"),
    (("train-cnn", "{images}", "-o", "{out}", "--workers", 0),
     "--workers must be from 1 to 256, got 0"),
    (("train-cnn", "{images}", "-o", "{out}", "--patience", -2),
     "--patience must be at least 0, got -2"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), OUT_OF_RANGE)
def test_settings_out_of_range_fail_at_once(tmp_path, args, message):
    images = colour_images(tmp_path / "images", per_class=3)
    out = tmp_path / "out"
    result = run(*(str(a).format(images=images, out=out) for a in args))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"
    assert not out.exists()
