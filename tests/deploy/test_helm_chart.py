"""The Helm chart, rendered by Helm's own engine (Helm v4 Go SDK via helm-python-sdk) with its
defaults and with GPUs, bundled PostgreSQL/Redis, autoscaling and a ServiceMonitor; every
manifest validated against the Kubernetes 1.37 JSON schemas (kubernetes-validate, strict: no
unknown fields); and the behaviour that matters checked field by field."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from service.observability.metrics import Metrics
from service.serving.manifests import read_manifest
from tests.conftest import REPO
from tests.deploy.conftest import CHART, import_or_skip

helm = import_or_skip("helm_python", "helm-python-sdk")
kubernetes_validate = import_or_skip("kubernetes_validate", "kubernetes-validate")

KUBERNETES = "1.37.0"
DRAIN = 30

EXTERNAL_DB = "postgresql+psycopg://maas:s3cret@db.internal:5432/maas"
FULL: dict[str, Any] = {
    "replicaCount": 3,
    "gpu": {"count": 2},
    "gateway": {"devices": "auto", "drainTimeoutSeconds": 120, "settings": {"MAAS_MAX_BODY_BYTES": 1024}},
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
                    },
                }
            ]
        }
    },
    "postgresql": {"enabled": True, "auth": {"password": "p@ss/word"}},
    "redis": {"enabled": True},
    "autoscaling": {"enabled": True, "customMetric": {"enabled": True}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "sharedData": {"enabled": True, "storageClassName": "nfs-client", "size": "200Gi"},
}

# Prometheus Operator CRDs ship no schema in any registry package: the fields this chart uses.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        files: dict[str, str] = chart.render(values or {}, name="maas", namespace="ml", is_install=True)
    return files


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders for `values`, NOTES.txt aside."""
    files = render_files(values)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        import jsonschema

        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    return render(FULL)


@pytest.fixture(scope="module")
def external() -> list[dict[str, Any]]:
    return render(
        {
            "replicaCount": 2,
            "externalDatabase": {"url": EXTERNAL_DB},
            "externalRedis": {"url": "redis://cache:6379/0"},
            "secrets": {"adminKey": "mk_chart_test_admin"},
        }
    )


def _all_cases() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "defaults", {}
    yield "full", FULL
    yield "external", {"replicaCount": 2, "externalDatabase": {"url": EXTERNAL_DB}}
    yield "existing-secret", {"replicaCount": 2, "secrets": {"existingSecret": "maas-prod"}}
    yield "existing-claim", {"sharedData": {"enabled": True, "existingClaim": "maas-data"}}


@pytest.mark.parametrize(("case", "values"), list(_all_cases()), ids=[c for c, _ in _all_cases()])
def test_every_rendered_manifest_is_valid_kubernetes(case: str, values: dict[str, Any]) -> None:
    docs = render(values)
    assert docs
    for doc in docs:
        validate(doc)


def test_helm_lint_strict_finds_no_error() -> None:
    for values in ({}, FULL):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.37.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
        assert not report["errors"] and not problems, report


def test_defaults_are_one_gateway_on_sqlite_with_no_optional_parts(defaults: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in defaults)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]
    env = env_of(gateway_container(defaults))
    assert "MAAS_DATABASE_URL" not in env and "MAAS_REDIS_URL" not in env
    assert secret_data(one(defaults, "Secret"))["admin-key"].startswith("mk_")


def test_probes_readiness_on_readyz_liveness_on_healthz_startup_waits_for_models(
    defaults: list[dict[str, Any]],
) -> None:
    container = gateway_container(defaults)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # minutes to load models
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


@pytest.mark.parametrize("drain", [DRAIN, 120, 7.5])
def test_the_grace_period_outlasts_the_prestop_sleep_plus_the_drain(drain: float) -> None:
    docs = render({"gateway": {"drainTimeoutSeconds": drain}})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    assert env_of(pod["containers"][0])["MAAS_DRAIN_TIMEOUT_S"] == str(drain)


def test_a_grace_period_shorter_than_the_drain_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="must exceed"):
        render({"gateway": {"drainTimeoutSeconds": 60, "terminationGracePeriodSeconds": 30}})


def test_the_pod_runs_as_non_root_with_a_read_only_root(defaults: list[dict[str, Any]]) -> None:
    pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False and container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/var/lib/maas", "/tmp", "/etc/maas/models"} <= mounts  # the writable places, and models
    assert pod["automountServiceAccountToken"] is False


def test_gpus_node_selector_and_tolerations_when_asked(
    full: list[dict[str, Any]], defaults: list[dict[str, Any]]
) -> None:
    resources = gateway_container(full)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 2 and resources["requests"]["nvidia.com/gpu"] == 2
    assert resources["requests"]["cpu"] == "2"  # the other requests are kept
    pod = one(full, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == FULL["nodeSelector"] and pod["tolerations"] == FULL["tolerations"]
    assert pod["affinity"] == FULL["affinity"]
    assert "nvidia.com/gpu" not in json.dumps(gateway_container(defaults)["resources"])
    assert env_of(gateway_container(full))["MAAS_MAX_BODY_BYTES"] == "1024"


def test_workers_follow_the_pods_cpu_request_not_the_nodes_cores(defaults: list[dict[str, Any]]) -> None:
    # the pod sets no CPU limit: MAAS_WORKERS=auto would start one worker per core of the node
    container = gateway_container(defaults)
    assert env_of(container)["MAAS_WORKERS"] == container["resources"]["requests"]["cpu"] == "2"
    assert env_of(gateway_container(render({"gateway": {"workers": "auto"}})))["MAAS_WORKERS"] == "auto"


def test_secrets_reach_the_pods_by_reference_only(full: list[dict[str, Any]]) -> None:
    env = env_of(gateway_container(full))
    for name, key in (("MAAS_ADMIN_KEY", "admin-key"), ("MAAS_DATABASE_URL", "database-url")):
        assert env[name]["secretKeyRef"] == {"name": "maas-maas-gateway", "key": key} | (
            {"optional": False} if key == "database-url" else {}
        )
    assert env["MAAS_REDIS_URL"]["secretKeyRef"]["key"] == "redis-url"
    data = secret_data(one(full, "Secret", "maas-maas-gateway"))
    assert (
        data["database-url"]
        == "postgresql+psycopg://maas:p%40ss%2Fword@maas-maas-gateway-postgresql:5432/maas"
    )
    assert data["redis-url"] == "redis://maas-maas-gateway-redis:6379/0"
    assert "p@ss/word" not in json.dumps(one(full, "Deployment"))  # never inline in the pod spec


def test_an_existing_secret_replaces_the_charts_own() -> None:
    docs = render({"replicaCount": 2, "secrets": {"existingSecret": "maas-prod"}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = env_of(gateway_container(docs))
    assert env["MAAS_ADMIN_KEY"]["secretKeyRef"] == {"name": "maas-prod", "key": "admin-key"}
    database = env["MAAS_DATABASE_URL"]["secretKeyRef"]
    assert database == {"name": "maas-prod", "key": "database-url", "optional": True}
    job_env = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert job_env[-1]["valueFrom"]["secretKeyRef"]["name"] == "maas-prod"


def test_the_migration_job_is_a_pre_install_pre_upgrade_hook_with_an_external_database(
    external: list[dict[str, Any]],
) -> None:
    job = one(external, "Job")
    notes = job["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in notes["helm.sh/hook-delete-policy"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # the database URL comes from a hook Secret created just before the Job
    ref = container["env"][-1]["valueFrom"]["secretKeyRef"]
    hook_secret = one(external, "Secret", ref["name"])
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    secret_weight = int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert secret_weight < int(notes["helm.sh/hook-weight"])
    assert secret_data(hook_secret) == {"database-url": EXTERNAL_DB}
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_with_the_bundled_database_the_migration_runs_after_install(full: list[dict[str, Any]]) -> None:
    assert one(full, "Job")["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    postgres = one(full, "StatefulSet", "maas-maas-gateway-postgresql")
    env = {e["name"]: e for e in postgres["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-password"
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    one(full, "StatefulSet", "maas-maas-gateway-redis")
    gateway = one(full, "Deployment")["spec"]["selector"]["matchLabels"]
    for name in ("maas-maas-gateway-postgresql", "maas-maas-gateway-redis"):
        labels = one(full, "StatefulSet", name)["spec"]["template"]["metadata"]["labels"]
        assert not gateway.items() <= labels.items()  # the gateway's Service never routes to them


def test_no_migration_job_without_a_shared_database(defaults: list[dict[str, Any]]) -> None:
    assert not [d for d in defaults if d["kind"] == "Job"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "shared database"),
        ({"autoscaling": {"enabled": True}}, "shared database"),
        ({"postgresql": {"enabled": True}}, "postgresql.auth.password is required"),
        (
            {
                "replicaCount": 2,
                "externalDatabase": {"url": EXTERNAL_DB},
                "sharedData": {"enabled": True, "accessModes": ["ReadWriteOnce"]},
            },
            "ReadWriteMany",
        ),
    ],
)
def test_unsafe_values_are_refused_at_render_time(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_replicas_share_one_data_volume_when_asked(full: list[dict[str, Any]]) -> None:
    claim = one(full, "PersistentVolumeClaim", "maas-maas-gateway-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-client"
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # fine-tuned models stay
    pod = one(full, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "data")
    assert volume == {"name": "data", "persistentVolumeClaim": {"claimName": "maas-maas-gateway-data"}}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data")
    assert mount["mountPath"] == "/var/lib/maas"  # the image's MAAS_DATA_DIR

    docs = render({"sharedData": {"enabled": True, "existingClaim": "maas-data"}})
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "maas-data"}} in pod["volumes"]


def test_several_replicas_without_a_shared_data_volume_are_warned_about(
    defaults: list[dict[str, Any]],
) -> None:
    assert {"name": "data", "emptyDir": {}} in one(defaults, "Deployment")["spec"]["template"]["spec"][
        "volumes"
    ]
    notes = {"replicaCount": 2, "externalDatabase": {"url": EXTERNAL_DB}}
    [text] = [t for p, t in render_files(notes).items() if p.endswith("NOTES.txt")]
    assert "sharedData.enabled" in text
    [text] = [t for p, t in render_files(FULL).items() if p.endswith("NOTES.txt")]
    assert "sharedData.enabled" not in text


def test_autoscaling_on_cpu_and_queue_depth_and_a_disruption_budget(full: list[dict[str, Any]]) -> None:
    hpa = one(full, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "maas-maas-gateway"}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "maas_queue_depth"
    assert "replicas" not in one(full, "Deployment")["spec"]  # the HPA owns the count
    pdb = one(full, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = one(full, "Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_the_service_monitor_scrapes_metrics_on_the_http_port(full: list[dict[str, Any]]) -> None:
    monitor = one(full, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    service = one(full, "Service", "maas-maas-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["name"] == "http"


def test_model_manifests_are_mounted_at_the_models_dir_and_parse(
    defaults: list[dict[str, Any]], tmp_path: Any
) -> None:
    configmap = one(defaults, "ConfigMap", "maas-maas-gateway-models")
    container = gateway_container(defaults)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert env_of(container)["MAAS_MODELS_DIR"] == mount["mountPath"]
    for name, text in configmap["data"].items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        manifest = read_manifest(path)
        if manifest.source.startswith("/models/"):  # shipped in the image, copied from models/
            assert (REPO / "models" / manifest.source.removeprefix("/models/")).is_dir()


def test_the_grafana_dashboard_covers_the_gateways_metrics(defaults: list[dict[str, Any]]) -> None:
    configmap = one(defaults, "ConfigMap", "maas-maas-gateway-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["maas-gateway.json"])
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("request rate", "p50 / p99", "queue wait", "batch size", "device memory", "billed usage"):
        assert topic in titles
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    known = {m.name for m in Metrics().registry.collect()} | {"maas_queue_depth", "maas_device_memory_bytes"}
    suffixes = ("_total", "_bucket", "_sum", "_count")
    for used in set(re.findall(r"\bmaas_[a-z_]+", exprs)):
        base = next((used.removesuffix(s) for s in suffixes if used.endswith(s)), used)
        # maas_usage_inputs_total{model} (tenant too where labelled) comes with usage metering
        assert base in known or used == "maas_usage_inputs_total", used


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicas": 3}, "replicas"),  # a typo of replicaCount
        ({"gpu": {"count": "two"}}, "/gpu/count"),
        ({"gateway": {"logFormat": "xml"}}, "/gateway/logFormat"),
        ({"externalDatabase": {"url": "mysql://db/maas"}}, "/externalDatabase/url"),
        ({"gateway": {"settings": {"max_body_bytes": 1}}}, "max_body_bytes"),  # variable names only
    ],
)
def test_values_schema_refuses_typos_and_wrong_types(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(where)):
        render(values)
