"""What `headstart backbones` shows: each Keras application embed takes by name, with
what its documentation and a measured export say of it, and which of its exports this
machine's cache holds."""

from __future__ import annotations

from typing import Any

from .applications import APPLICATIONS
from .backbone import cache_root
from .model_cache import DamagedEntry, entries, read_entry


def catalogue() -> list[dict[str, Any]]:
    cached = _cached_weights()
    return [
        {
            "name": app.name,
            "dim": app.dim,
            "size": app.size,
            "min_size": app.size if app.fixed_size else app.min_size,
            "fixed_size": app.fixed_size,
            "params": app.params,
            "top1": app.top1,
            "preprocessing": app.preprocessing,
            "cached": sorted(cached.get(app.name, [])),
        }
        for app in APPLICATIONS.values()
    ]


def _cached_weights() -> dict[str, list[str]]:
    """backbone name -> the weights of its exports in the cache (damaged ones left out)."""
    found: dict[str, list[str]] = {}
    try:
        folders = list(entries(cache_root() / "models"))
    except OSError:  # a cache this user cannot list holds nothing for them
        folders = []
    for folder in folders:
        try:
            entry = read_entry(folder)
        except (DamagedEntry, OSError):
            continue
        if entry is not None:
            manifest = entry.manifest
            found.setdefault(str(manifest.get("backbone")), []).append(str(manifest.get("weights")))
    return found
