"""The TensorFlow boundary.

TensorFlow, Keras and tf2onnx come with the `tensorflow` extra (`pip install -e
'.[tensorflow]'` in headstart's folder). They export a Keras application to ONNX (once per
backbone; the export is cached), train the MLP head and train-cnn's networks, and convert
those to ONNX. Everything else (embed from a cached backbone or an ONNX file, predict,
export, info, the store tools, the scikit-learn heads) runs on ONNX Runtime and never
imports them, so an embedding node can do without the ~1.9 GB they take.

The first import of them, wherever it happens, goes through `import_keras`, which
- where one is missing, says what needs it and what to install (`require_tensorflow` says
  so before any work, for the commands that will need them); where one is installed and
  fails to import, says why;
- keeps TensorFlow's C++ start-up lines (absl's "All log messages before
  absl::InitializeLog()", the CUDA stubs, CPU features, oneDNN) off the terminal: they are
  written to file descriptor 2 during the import and device set-up, past Python's logging
  and, before absl is initialised, past TF_CPP_MIN_LOG_LEVEL. Other lines pass.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys

from .errors import SettingError
from .native_stderr import native_stderr

log = logging.getLogger("headstart")

PACKAGES = ("tensorflow", "keras", "tf2onnx")
# The `tensorflow` extra's requirements, as pyproject.toml lists them (a test keeps them equal)
EXTRA_REQUIREMENTS = ("tensorflow>=2.16", "tensorboard>=2.16", "tf2onnx>=1.16")
INSTALL = (
    "pip install -e '.[tensorflow]' in headstart's folder (or pip install "
    + " ".join(f"'{requirement}'" for requirement in EXTRA_REQUIREMENTS)
    + ")"
)

# absl log lines (I/W/E/F, date, time (seconds since 1970 before absl is initialised),
# thread, source file), absl's notice that they go to stderr, the CPU-instruction advice
# that follows one of them, and the older format with a full date.
_NATIVE_NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\]"
    r")"
)


class TensorFlowMissingError(SettingError):
    """TensorFlow (or Keras, or tf2onnx) is not installed, or fails to import, and the work
    asked for needs it."""


def missing_packages() -> list[str]:
    """Those of TensorFlow, Keras and tf2onnx that this Python cannot find."""
    missing = []
    for name in PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_tensorflow(purpose: str, otherwise: str = "") -> None:
    """Raise TensorFlowMissingError, naming `purpose` ("training the MLP head"), what to
    install and `otherwise` (another way out), where TensorFlow, Keras or tf2onnx is
    missing. Cheap: nothing is imported."""
    missing = missing_packages()
    if missing:
        raise TensorFlowMissingError(
            f"{purpose} needs TensorFlow, Keras and tf2onnx, and this Python lacks "
            f"{', '.join(missing)}: install them with {INSTALL}"
            + (f", {otherwise}" if otherwise else "")
            + " (embed from a cached backbone, predict, export and info run without them)"
        )


def import_keras(purpose: str):
    """Keras (and with it TensorFlow, and tf2onnx), imported without TensorFlow's start-up
    lines reaching the terminal; TensorFlowMissingError naming `purpose` where missing or
    broken."""
    if "keras" in sys.modules and "tf2onnx" in sys.modules:
        return sys.modules["keras"]
    require_tensorflow(purpose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later INFO and WARNING lines
    try:
        with native_stderr(keep=_not_noise) as dropped:
            import keras
            import tensorflow
            import tf2onnx  # noqa: F401

            # Devices are set up at the first operation, which says so (cuInit's failure on
            # a machine without a GPU, say): here, while filtered.
            tensorflow.config.list_physical_devices()
    except Exception as error:  # installed and broken: a library, a version, an ABI
        log.debug("importing TensorFlow failed", exc_info=True)
        said = str(error).strip().splitlines()
        raise TensorFlowMissingError(
            f"{purpose} needs TensorFlow, Keras and tf2onnx, which are installed but fail to "
            f"import ({said[-1][:300] if said else type(error).__name__}): reinstall them "
            f"with {INSTALL}"
        ) from None
    for line in dropped:
        log.debug("tensorflow: %s", line)
    return keras


def _not_noise(line: str) -> bool:
    return not _NATIVE_NOISE.match(line)
