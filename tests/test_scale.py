"""Scaling out: `embed --shard K/N` array jobs filling one store together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from headstart.cli import main
from headstart.extractor.errors import StoreLockedError
from headstart.extractor.samples import make_sample_images
from headstart.extractor.shard import Shard, parse_shard
from headstart.extractor.store import FeatureStore
from helpers import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path):
    folder = make_sample_images(tmp_path / "images", classes=3, per_class=8, size_range=(60, 120))
    (folder / "circle" / "broken.jpg").write_text("not an image")
    (folder / "square" / "empty.png").write_bytes(b"")
    return folder


def embed_command(images: Path, out: Path, weights_file: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "headstart", "embed", str(images), "-o", str(out),
        "--weights", str(weights_file), "--image-size", str(IMAGE_SIZE), "--rows-per-part", "3",
        *extra,
    ]  # fmt: skip


def test_three_concurrent_shards_make_the_store_one_run_makes(images, weights_file, tmp_path):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    jobs = [
        subprocess.Popen(
            embed_command(images, sharded, weights_file, "--shard", f"{k}/3"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    outputs = [job.communicate() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], outputs
    done = subprocess.run(
        embed_command(images, single, weights_file), cwd=REPO, capture_output=True
    )
    assert done.returncode == 0

    got = pd.read_parquet(sharded).sort_values("path", ignore_index=True)
    expected = pd.read_parquet(single).sort_values("path", ignore_index=True)
    assert got["path"].tolist() == expected["path"].tolist()  # every file exactly once
    assert len(got) == 24 and got["path"].is_unique
    assert got["sha256"].tolist() == expected["sha256"].tolist()
    np.testing.assert_allclose(
        np.stack(got["features"]), np.stack(expected["features"]), rtol=1e-5, atol=1e-6
    )
    embedded = [int(out.split("embedded ")[1].split(",")[0]) for out, _ in outputs]
    assert sum(embedded) == 24 and all(embedded)  # each job did its share

    names = sorted(p.name for p in sharded.glob("part-*.parquet"))
    assert all(name.startswith(("part-shard0of3-", "part-shard1of3-", "part-shard2of3-"))
               for name in names)  # fmt: skip
    errors = pd.read_csv(sharded / "_errors.csv")
    assert errors["path"].tolist() == ["circle/broken.jpg", "square/empty.png"]

    after = CliRunner().invoke(
        main,
        ["embed", str(images), "-o", str(sharded), "--weights", str(weights_file),
         "--image-size", str(IMAGE_SIZE)],
    )  # fmt: skip
    assert after.exit_code == 0, after.output
    assert "embedded 0, skipped 2, already present 24" in after.output


def test_shard_membership_is_stable_and_complete():
    paths = [f"class{i % 5}/image{i:04d}.jpg" for i in range(300)]
    shards = [Shard(k, 4) for k in range(4)]
    owners = [[s.holds(p) for s in shards].count(True) for p in paths]
    assert owners == [1] * 300
    sizes = [sum(s.holds(p) for p in paths) for s in shards]
    assert min(sizes) > 40  # spread, not piled on one job
    before = {p: next(s for s in shards if s.holds(p)) for p in paths}
    more = paths + [f"new/{i}.jpg" for i in range(100)]  # adding files moves nothing
    assert all(next(s for s in shards if s.holds(p)) == before[p] for p in more[:300])


def test_shards_exclude_an_unsharded_writer_but_not_each_other(tmp_path):
    first = FeatureStore(tmp_path, Shard(0, 2))
    second = FeatureStore(tmp_path, Shard(1, 2))
    with first.locked(), second.locked():
        with pytest.raises(StoreLockedError, match="being written by shard 0/2"):
            with FeatureStore(tmp_path, Shard(0, 2)).locked():
                pass
        with pytest.raises(StoreLockedError, match="another headstart run"):
            with FeatureStore(tmp_path).locked():
                pass
    with FeatureStore(tmp_path).locked():
        with pytest.raises(StoreLockedError, match="an unsharded run"):
            with FeatureStore(tmp_path, Shard(1, 2)).locked():
                pass


def test_shards_of_another_count_are_refused_while_they_write(tmp_path):
    """--shard 0/3 beside --shard 0/2 would embed a third of the files twice."""
    with FeatureStore(tmp_path, Shard(1, 3)).locked():
        with pytest.raises(StoreLockedError, match=r"by shard 1/3 \(pid .*give --shard K/3"):
            with FeatureStore(tmp_path, Shard(0, 2)).locked():
                pass
        with FeatureStore(tmp_path, Shard(2, 3)).locked():  # the same array: welcome
            pass
    with FeatureStore(tmp_path, Shard(0, 2)).locked():  # once they are done, another split
        pass


@pytest.mark.parametrize("value", ["3/3", "-1/3", "1", "a/b", "0/0"])
def test_bad_shard_values_fail_before_any_work(value, images, tmp_path):
    with pytest.raises(Exception, match=r"give K/N with 0 <= K < N"):
        parse_shard(value)
    result = CliRunner().invoke(main, ["embed", str(images), "-o", str(tmp_path / "f"),
                                       "--shard", value])  # fmt: skip
    assert result.exit_code == 1 and "give K/N with 0 <= K < N" in result.stderr
    assert not (tmp_path / "f").exists()


def test_the_ray_engine_fills_the_store_the_local_engine_fills(images, weights_file, tmp_path):
    def embed(out, *extra):
        args = ["embed", str(images), "-o", str(out), "--weights", str(weights_file),
                "--image-size", str(IMAGE_SIZE), *extra]  # fmt: skip
        return CliRunner().invoke(main, args)

    on_ray = embed(tmp_path / "ray", "--engine", "ray")
    assert on_ray.exit_code == 0, on_ray.output
    assert "embedded 24, skipped 2, already present 0" in on_ray.output
    assert embed(tmp_path / "local").exit_code == 0

    got = pd.read_parquet(tmp_path / "ray").sort_values("path", ignore_index=True)
    expected = pd.read_parquet(tmp_path / "local").sort_values("path", ignore_index=True)
    for column in ("path", "label", "sha256", "width", "height"):
        assert got[column].tolist() == expected[column].tolist(), column
    difference = np.abs(np.stack(got["features"]) - np.stack(expected["features"])).max()
    assert difference <= 1e-5
    for name in ("_errors.csv",):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()

    # incremental on Ray too: every file read again (--rehash), found unchanged by sha256
    again = embed(tmp_path / "ray", "--engine", "ray", "--rehash")
    assert again.exit_code == 0, again.output
    assert "embedded 0, skipped 2, already present 24" in again.output


def test_the_ray_engine_without_ray_says_how_to_install_it(images, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    result = CliRunner().invoke(
        main, ["embed", str(images), "-o", str(tmp_path / "f"), "--engine", "ray"]
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: --engine ray needs Ray, which is not installed: pip install 'headstart[ray]' "
        "(or pip install 'ray[data]')\n"
    )
    assert not (tmp_path / "f").exists()


# --- the Docker image (no Docker engine here: its parts are checked one by one) ----------


def test_dockerfile_passes_hadolint():
    done = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_is_one_package_whose_every_file_the_dockerfile_copies(tmp_path):
    """pip installs one import package, `headstart`, made of the repository's top-level
    folders (no top-level `cli` or `extractor` to collide with other distributions'), and
    the image's COPY lines bring every file of it into the build."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: building in place would leave build/ behind
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", ".hypothesis", ".*_cache"))  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", tmp_path / "wheel", source],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("headstart-*.whl")
    installed = [name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name]
    assert {name.split("/")[0] for name in installed} == {"headstart"}
    in_package = {name.removeprefix("headstart/") for name in installed}
    assert {"__init__.py", "__main__.py", "cli.py", "extractor/spec.py"} <= in_package
    assert not any(name.startswith(("tests/", "bench/")) for name in in_package)

    copied = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(line.split()[1:-1])
    for name in in_package:
        assert name in copied or name.split("/")[0] in copied, f"the image lacks {name}"


def test_the_build_time_export_command_runs(weights_file):
    dockerfile = (REPO / "Dockerfile").read_text()
    command = 'python -m headstart.extractor.backbone "$WEIGHTS" "$BACKBONE"'
    assert command in dockerfile and "ARG BACKBONE=inception_v3" in dockerfile
    done = subprocess.run(
        [sys.executable, "-m", "headstart.extractor.backbone", str(weights_file), "inception_v3"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    onnx_path = Path(done.stdout.strip().rsplit(" cached at ", 1)[1])
    assert onnx_path.name == "model.onnx" and onnx_path.is_file()


def test_the_image_gets_cuda_libraries_of_the_version_onnxruntime_is_built_for():
    """The image installs CUDA and cuDNN through onnxruntime-gpu's own extras, which name the
    CUDA major its build needs, instead of pinning one in a CUDA base image."""
    import importlib.metadata
    import tomllib

    from onnxruntime.capi import build_and_package_info as build

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in extras["gpu"])
    runtime = _runtime_stage()
    assert 'RUN pip install -c docker/constraints.txt ".[gpu]"' in runtime
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in runtime
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM nvidia/cuda" not in dockerfile and "CUDA_IMAGE" not in dockerfile

    major = build.cuda_version.split(".")[0]
    cuda_extra = [
        r for r in importlib.metadata.requires("onnxruntime-gpu") if 'extra == "cuda"' in r
    ]
    runtime_pin = [r for r in cuda_extra if r.startswith("nvidia-cuda-runtime")]
    assert runtime_pin and f"~={major}." in runtime_pin[0], cuda_extra


def _runtime_stage() -> str:
    """The Dockerfile from its last FROM: what the image that runs is made of."""
    dockerfile = (REPO / "Dockerfile").read_text()
    return dockerfile[dockerfile.rindex("\nFROM ") :]


def test_tensorflow_exports_in_the_build_stage_and_stays_out_of_the_image():
    dockerfile = (REPO / "Dockerfile").read_text()
    build = dockerfile[dockerfile.index("\nFROM ") : dockerfile.rindex("\nFROM ")]
    assert 'pip install -c docker/constraints.txt ".[tensorflow]"' in build
    assert "python -m headstart.extractor.backbone" in build
    runtime = _runtime_stage()
    assert "tensorflow" not in runtime.lower().replace("no tensorflow", "")
    assert "COPY --from=export --chown=1000 /opt/headstart-cache /opt/headstart-cache" in runtime
    assert runtime.index("COPY --from=export") < runtime.index("USER 1000")


def test_the_image_constraints_pin_every_package_each_stage_installs():
    """Two builds from one commit resolve the same packages: each distribution the stages
    install (followed through the installed metadata, and the CUDA wheels of the gpu extra)
    is pinned to one version in docker/constraints.txt, within pyproject's ranges."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from lean_env import closure, requirements

    pins = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    needed = set(closure(requirements("tensorflow")))
    cuda = [
        Requirement(line)
        for line in importlib.metadata.requires("onnxruntime-gpu")
        if 'extra == "cuda"' in line or 'extra == "cudnn"' in line
    ]
    needed |= {canonicalize_name(requirement.name) for requirement in cuda}
    unpinned = sorted(needed - set(pins))
    assert not unpinned, f"not in docker/constraints.txt (run python docker/pin.py): {unpinned}"
    for requirement in requirements("tensorflow", "gpu"):
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (requirement, version)
