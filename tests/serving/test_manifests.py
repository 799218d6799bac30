"""Model manifests: what a valid file gives, and how a bad file is reported instead of raised."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.serving.manifests import ModelManifest, discover_manifests, read_manifest


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_minimal_manifest_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "vit.yaml",
        """
        name: vit-base
        task: image-classification
        source: google/vit-base-patch16-224
    """,
    )
    manifest = read_manifest(path)
    assert manifest.name == "vit-base" and manifest.source == "google/vit-base-patch16-224"
    assert manifest.adapter == "transformers" and manifest.dtype == "auto"
    assert manifest.batching.max_batch_size == 32 and manifest.batching.max_delay_ms == 5.0
    assert manifest.replicas == 1 and manifest.preload is True
    assert manifest.price.per_image == 0.0


def test_the_contract_example_is_valid(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "vit-base.yaml",
        """
        name: vit-base                        # the id in URLs
        task: image-classification
        adapter: transformers
        source: google/vit-base-patch16-224
        dtype: bfloat16
        batching: {max_batch_size: 16, max_delay_ms: 2}
        replicas: 2
        preload: false
        price: {per_image: 0.0002}
    """,
    )
    manifest = read_manifest(path)
    assert manifest.dtype == "bfloat16" and manifest.replicas == 2 and manifest.preload is False
    assert manifest.batching.max_batch_size == 16 and manifest.price.per_image == 0.0002


@pytest.mark.parametrize("name", ["Vit-Base", "vit base", "-vit", "a/b", "x" * 65, ""])
def test_name_must_be_url_safe(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        f"""
        name: "{name}"
        task: image-classification
        source: ./weights
    """,
    )
    with pytest.raises(ValueError, match=r"bad\.yaml: name: .*a-z, 0-9"):
        read_manifest(path)


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "typo.yaml",
        """
        name: vit
        task: image-classification
        source: ./weights
        max_batch: 8
        batching: {max_batch_size: 8, delay_ms: 3}
    """,
    )
    with pytest.raises(ValueError, match=r"typo\.yaml") as caught:
        read_manifest(path)
    message = str(caught.value)
    assert "max_batch:" in message and "batching.delay_ms:" in message


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("task: text-generation", "task"),
        ("dtype: int8", "dtype"),
        ("replicas: 0", "replicas"),
        ("batching: {max_batch_size: 0}", "batching.max_batch_size"),
        ("price: {per_image: -1}", "price.per_image"),
        ("price: {per_training_sample: -1}", "price.per_training_sample"),
        ("price: {batch_discount: 1.5}", "price.batch_discount"),
        ("price: {batch_discount: -0.1}", "price.batch_discount"),
    ],
)
def test_out_of_range_values_name_their_field(tmp_path: Path, line: str, named: str) -> None:
    fields = {"name": "name: vit", "task": "task: image-classification", "source": "source: ./w"}
    fields[line.split(":", 1)[0]] = line
    path = write(tmp_path, "m.yaml", "\n".join(fields.values()) + "\n")
    with pytest.raises(ValueError, match=rf"{named}:"):
        read_manifest(path)


def test_a_lora_adapter_manifest_names_its_base_and_must_be_a_transformers_classifier(
    tmp_path: Path,
) -> None:
    lines = "name: mine\ntask: image-classification\nsource: ./adapter\nbase_source: ./vit\n"
    assert read_manifest(write(tmp_path, "ok.yaml", lines)).base_source == "./vit"
    with pytest.raises(ValueError, match="base_source"):
        read_manifest(
            write(tmp_path, "bad.yaml", lines.replace("image-classification", "feature-extraction"))
        )


def test_missing_required_fields_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "name: vit\n")
    with pytest.raises(ValueError) as caught:
        read_manifest(path)
    assert "task:" in str(caught.value) and "source:" in str(caught.value)


@pytest.mark.parametrize("text", ["- name: vit\n- task: x\n", "just a string\n", "", "42\n"])
def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "list.yaml", text)
    with pytest.raises(ValueError, match=r"list\.yaml: a manifest is a YAML mapping"):
        read_manifest(path)


def test_broken_yaml_is_a_value_error(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "name: [vit\ntask: image-classification\n")
    with pytest.raises(ValueError, match=r"cannot read broken\.yaml"):
        read_manifest(path)


def test_discover_keeps_bad_files_as_errors_and_sorts_by_file(tmp_path: Path) -> None:
    write(tmp_path, "b-good.yaml", "name: good\ntask: feature-extraction\nsource: ./w\n")
    write(tmp_path, "a-broken.yaml", "name: [oops\n")
    write(tmp_path, "c-list.yml", "- 1\n- 2\n")
    write(tmp_path, "notes.txt", "not a manifest\n")

    found = discover_manifests(tmp_path)

    assert [f.path.name for f in found] == ["a-broken.yaml", "b-good.yaml", "c-list.yml"]
    broken, good, listed = found
    assert broken.manifest is None and broken.error and "a-broken.yaml" in broken.error
    assert broken.name == "a-broken"  # listed under its file name
    assert isinstance(good.manifest, ModelManifest) and good.error is None and good.name == "good"
    assert listed.manifest is None and listed.error and "YAML mapping" in listed.error


def test_discover_in_a_missing_folder_finds_nothing(tmp_path: Path) -> None:
    assert discover_manifests(tmp_path / "nope") == []


def test_shipped_manifests_are_valid() -> None:
    models = Path(__file__).resolve().parents[2] / "models"
    found = discover_manifests(models)
    assert found, "models/ has no manifests"
    assert [(f.path.name, f.error) for f in found if f.error] == []


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "image-feature-extraction"])
def test_the_text_and_image_feature_tasks_are_manifest_tasks(tmp_path: Path, task: str) -> None:
    path = write(tmp_path, "m.yaml", f"name: m\ntask: {task}\nsource: ./w\npooling: cls\n")
    assert read_manifest(path).task == task


@pytest.mark.parametrize(
    ("template", "valid"),
    [("a photo of {}", True), ("{}", True), ("a photo", False), ("{} or {}", False), ("a {x} of {}", False)],
)
def test_a_hypothesis_template_holds_one_place_for_the_label(template: str, valid: bool) -> None:
    fields = {"name": "clip", "task": "zero-shot-image-classification", "source": "openai/clip"}
    assert ModelManifest(**fields).hypothesis_template == "This is a photo of {}."  # the pipeline's
    if valid:
        assert ModelManifest(**fields, hypothesis_template=template).hypothesis_template == template
    else:
        with pytest.raises(ValueError, match="hypothesis_template"):
            ModelManifest(**fields, hypothesis_template=template)
