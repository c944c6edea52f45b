"""A model.onnx from someone else is run once, on one small batch, in a child process with
bounded memory and time before this process loads it: a few kilobytes of ONNX can declare
or compute tensors of many gigabytes (a ConstantOfShape), which would take the machine's
memory or end in an allocation failure. The verdict is cached by the file's sha256 and the
input, so each file is probed once.

    python -m extractor.onnx_probe MODEL.onnx SHAPE DTYPE MEMORY_MB   (the child; prints
    the output shapes)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from .errors import HeadstartError
from .json_input import parse_json
from .safe_files import OutputFolder, read_own_file
from .terminal import said_by

PROBE_ROWS = 2  # a batch of two: a model that only takes one is found out too
PROBE_MEMORY_MB = 4096  # $HEADSTART_PROBE_MEMORY_MB overrides it
PROBE_SECONDS = 120
VERDICTS = "probed"  # under the cache root


class ModelProbeError(HeadstartError):
    """A model.onnx that cannot run on one small batch within the probe's limits."""


def probe(
    onnx_path: Path, item: tuple[int, ...], dtype: str, cache: Path, sha256: str | None = None
) -> None:
    """Run `onnx_path` once on a batch of PROBE_ROWS zero items of shape `item` and `dtype`
    in a bounded child process, unless a verdict for its content (`sha256`, where the
    caller has it already) is cached; a ModelProbeError when it fails there."""
    shape = (PROBE_ROWS, *item)
    try:
        key = _verdict_name(onnx_path, shape, dtype, sha256)
    except OSError as error:
        raise ModelProbeError(f"{onnx_path} cannot be read ({error.strerror})") from None
    try:
        if parse_json(read_own_file(cache / VERDICTS / key))["ran"]:
            return
    except (OSError, ValueError, KeyError, TypeError, HeadstartError):
        pass
    size = ",".join(map(str, shape))
    memory_mb = _memory_limit_mb()
    # -P: the caller's working folder is not put on the child's sys.path, where a file
    # named like a module the child imports would be run instead of it
    command = [sys.executable, "-P", "-m", __name__, os.path.abspath(onnx_path), size, dtype,
               str(memory_mb)]  # fmt: skip
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ModelProbeError(
            f"{onnx_path} did not finish one batch of {_shown(shape)} in {PROBE_SECONDS} s; "
            "it is not a model headstart can use"
        ) from None
    if child.returncode != 0 or not child.stdout.strip():
        reason = (child.stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        if len(reason) > 300:  # ONNX Runtime says where first and what last
            reason = "…" + reason[-300:]
        raise ModelProbeError(
            f"{onnx_path} cannot run one batch of {_shown(shape)} ({reason}): it is "
            f"damaged, not made for this input, or needs more than {memory_mb} MB "
            "(HEADSTART_PROBE_MEMORY_MB raises the limit for a model you trust)"
        )
    vouch(onnx_path, item, dtype, cache)


def vouch(onnx_path: Path, item: tuple[int, ...], dtype: str, cache: Path) -> None:
    """Record that `onnx_path` runs on items of shape `item`: after a probe, or for a model
    this machine has just made (train, train-cnn), which then needs no probe."""
    try:
        with OutputFolder(cache / VERDICTS) as verdicts:
            name = _verdict_name(onnx_path, (PROBE_ROWS, *item), dtype)
            verdicts.write_text(name, json.dumps({"ran": True}) + "\n")
    except (OSError, HeadstartError):
        pass  # a read-only cache: the file is probed again next time


def _verdict_name(
    onnx_path: Path, shape: tuple[int, ...], dtype: str, sha256: str | None = None
) -> str:
    from .model_cache import sha256_of_file

    content = sha256 or sha256_of_file(onnx_path)
    return f"{content}-{'x'.join(map(str, shape))}-{dtype}.json"


def _memory_limit_mb() -> int:
    said = os.environ.get("HEADSTART_PROBE_MEMORY_MB", "")
    try:
        return max(256, int(said)) if said else PROBE_MEMORY_MB
    except ValueError:
        raise ModelProbeError(
            f"HEADSTART_PROBE_MEMORY_MB must be a whole number of megabytes, got {said!r}"
        ) from None


def _shown(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _run_once(onnx_path: str, shape: str, dtype: str, memory_mb: str) -> None:
    """The child: limit this process, run the model once, print its output shapes."""
    limit = int(memory_mb) << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # a parent run under a lower limit keeps it
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the parent tells what failed, in one line
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    zeros = np.zeros(tuple(int(n) for n in shape.split(",")), dtype=dtype)
    outputs = session.run(None, {session.get_inputs()[0].name: zeros})
    print(json.dumps([list(np.shape(output)) for output in outputs]))  # "it ran"


if __name__ == "__main__":
    try:
        _run_once(*sys.argv[1:5])
    except MemoryError:
        sys.exit("out of memory")
    except Exception as error:  # onnxruntime's own untyped errors: one line for the parent
        sys.exit(f"{type(error).__name__}: {said_by(error, limit=100_000)}")  # one line
