"""The compose file, Kubernetes manifests, Redis config and S3 bucket configs say what they must."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.session import get_session
from botocore.validate import ParamValidator

pytestmark = pytest.mark.unit

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S = INFRA / "k8s"


def _redis_directives(path: Path) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            directives.setdefault(name.lower(), []).append(value.strip())
    return directives


def _k8s_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _deployment(name: str) -> dict[str, Any]:
    for doc in _k8s_documents():
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no Deployment {name}")


def _validate_s3_input(operation: str, member: str, value: Any) -> None:
    model = get_session().get_service_model("s3").operation_model(operation)
    shape = model.input_shape.members[member]
    report = ParamValidator().validate(value, shape)
    assert not report.has_errors(), report.generate_report()


def test_each_deploy_file_says_it_is_checked_by_parsing_only() -> None:
    files = [INFRA / "compose.yaml", INFRA / "redis" / "redis.conf", *K8S.glob("*.yaml")]
    for path in files:
        head = "".join(path.read_text().splitlines(keepends=True)[:6])
        assert "parsing" in head, path
    assert "parsing" in (INFRA / "s3" / "README.md").read_text()


def test_redis_conf_keeps_every_write_and_never_evicts() -> None:
    directives = _redis_directives(INFRA / "redis" / "redis.conf")
    assert directives["appendonly"] == ["yes"]
    assert directives["appendfsync"] == ["everysec"]
    assert directives["maxmemory-policy"] == ["noeviction"]


def test_compose_runs_every_process_against_redis_with_the_config() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "receiver", "worker", "beat", "flower"} <= set(services)
    redis = services["redis"]
    assert redis["image"].startswith("redis:6.2")
    mounted = [volume.split(":")[0] for volume in redis["volumes"]]
    assert "./redis/redis.conf" in mounted
    assert (INFRA / "redis" / "redis.conf").exists()
    assert "/usr/local/etc/redis/redis.conf" in redis["command"]
    for name in ("receiver", "worker", "beat", "flower"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0", name
        assert "S3_ENDPOINT_URL" in environment and "S3_BUCKET" in environment, name
    assert "webhooks.wsgi:app" in services["receiver"]["command"]
    assert "workers.worker" in services["worker"]["command"]
    assert "beat" in services["beat"]["command"]
    assert services["beat"]["deploy"]["replicas"] == 1


def test_k8s_deploys_receiver_worker_and_a_single_beat() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in _k8s_documents()}
    assert {
        ("Deployment", "imagine-receiver"),
        ("Deployment", "imagine-worker"),
        ("Deployment", "imagine-beat"),
        ("Service", "imagine-receiver"),
        ("ConfigMap", "imagine-settings"),
        ("Secret", "imagine-secrets"),
    } <= kinds
    beat = _deployment("imagine-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    receiver = _deployment("imagine-receiver")["spec"]["template"]["spec"]["containers"][0]
    assert receiver["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert receiver["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_k8s_settings_split_into_configmap_and_placeholder_secret() -> None:
    documents = _k8s_documents()
    configmap = next(doc for doc in documents if doc["kind"] == "ConfigMap")
    secret = next(doc for doc in documents if doc["kind"] == "Secret")
    assert {"REDIS_URL", "RUNWARE_API_KEY", "WEBHOOK_SECRETS", "API_KEYS"} <= set(
        secret["stringData"]
    )
    assert all("REPLACE_ME" in value for value in secret["stringData"].values())
    assert not set(configmap["data"]) & set(secret["stringData"])
    assert all(isinstance(value, str) for value in configmap["data"].values())
    for doc in documents:
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            sources = {
                ref.get("configMapRef", ref.get("secretRef", {})).get("name")
                for ref in container["envFrom"]
            }
            assert sources == {"imagine-settings", "imagine-secrets"}, doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_lifecycle_expires_staging_after_two_days_and_aborts_multipart() -> None:
    lifecycle = json.loads((INFRA / "s3" / "lifecycle.json").read_text())
    _validate_s3_input("PutBucketLifecycleConfiguration", "LifecycleConfiguration", lifecycle)
    staging = [rule for rule in lifecycle["Rules"] if rule["Filter"].get("Prefix") == "staging/"]
    assert len(staging) == 1
    assert staging[0]["Status"] == "Enabled"
    assert staging[0]["Expiration"] == {"Days": 2}
    aborts = [rule for rule in lifecycle["Rules"] if "AbortIncompleteMultipartUpload" in rule]
    assert any(rule["Filter"].get("Prefix") == "" for rule in aborts)
    assert not any(
        rule["Filter"].get("Prefix", "").startswith("jobs/") for rule in lifecycle["Rules"]
    )


def test_notification_fires_on_manifests_under_jobs() -> None:
    notification = json.loads((INFRA / "s3" / "notification.json").read_text())
    _validate_s3_input(
        "PutBucketNotificationConfiguration", "NotificationConfiguration", notification
    )
    (queue,) = notification["QueueConfigurations"]
    rules = {rule["Name"]: rule["Value"] for rule in queue["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": "jobs/", "suffix": "manifest.json"}
    assert queue["Events"] == ["s3:ObjectCreated:*"]
