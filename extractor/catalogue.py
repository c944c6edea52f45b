"""What `headstart backbones` shows: each Keras application embed takes by name, with
what its documentation and a measured export say of it, and which of its exports this
machine's cache holds."""

from __future__ import annotations

from typing import Any

from .applications import APPLICATIONS, UNSUPPORTED
from .backbone import cache_root
from .errors import HeadstartError
from .json_input import parse_json
from .model_cache import MANIFEST_FILE, entries
from .safe_files import read_own_file


def catalogue() -> list[dict[str, Any]]:
    cached = _cached_weights()
    return [
        {
            "name": app.name,
            "dim": app.dim,
            "size": app.size,
            "min_size": app.min_size,
            "fixed_size": app.fixed_size,
            "params": app.params,
            "top1": app.top1,
            "export_peak_gb": app.export_peak_gb,
            "export_seconds": app.export_seconds,
            "preprocessing": app.preprocessing,
            "cached": sorted(cached.get(app.name, [])),
            "unsupported": UNSUPPORTED.get(app.name),
        }
        for app in APPLICATIONS.values()
    ]


def _cached_weights() -> dict[str, list[str]]:
    """backbone name -> the weights of its exports in the cache (unreadable ones left out;
    a damaged model is found and made again when it is used)."""
    found: dict[str, list[str]] = {}
    try:
        folders = list(entries(cache_root() / "models"))
    except OSError:  # a cache this user cannot list holds nothing for them
        folders = []
    for folder in folders:  # manifests only: a listing need not hash gigabytes of models
        try:
            manifest = parse_json(read_own_file(folder / MANIFEST_FILE))
        except (OSError, ValueError, HeadstartError):
            continue
        if isinstance(manifest, dict):
            found.setdefault(str(manifest.get("backbone")), []).append(str(manifest.get("weights")))
    return found
