"""The compose file, Kubernetes manifests, Redis config and S3 bucket configs say what they must."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.session import get_session
from botocore.validate import ParamValidator

from workers.flower import OAUTH_VARIABLES

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
    for name in ("receiver", "worker", "beat"):
        environment = services[name]["environment"]
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
        # Flower gets its own login and REDIS_URL alone, none of the pipeline's credentials.
        expected = {"imagine-settings",
                    "imagine-flower" if doc["metadata"]["name"] == "imagine-flower"
                    else "imagine-secrets"}  # fmt: skip
        for container in doc["spec"]["template"]["spec"]["containers"]:
            sources = {
                ref.get("configMapRef", ref.get("secretRef", {})).get("name")
                for ref in container["envFrom"]
            }
            assert sources == expected, doc["metadata"]["name"]


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


# --- Flower: authenticated, never reachable from everywhere ----------------------------------

FLOWER_LABELS = {"app.kubernetes.io/name": "imagine-flower"}


def _flower_container() -> dict[str, Any]:
    containers = _deployment("imagine-flower")["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _secret_keys(name: str) -> set[str]:
    for doc in _k8s_documents():
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == name:
            return set(doc.get("stringData", {})) | set(doc.get("data", {}))
    raise AssertionError(f"no Secret {name}")


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether selector picks labels (matchLabels only; any other selector counts as a match)."""
    if set(selector) - {"matchLabels"}:
        return True
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _is_loopback(address: str) -> bool:
    return address == "localhost" or ipaddress.ip_address(address).is_loopback


def _flower_auth_is_configured(keys: set[str]) -> bool:
    return "FLOWER_BASIC_AUTH" in keys or {"FLOWER_AUTH", *OAUTH_VARIABLES} <= keys


def test_k8s_flower_takes_its_login_from_a_secret_and_never_from_argv() -> None:
    container = _flower_container()
    argv = " ".join([*container.get("command", []), *container.get("args", [])])
    assert "workers.flower" in argv  # the entry point that refuses to run without auth
    assert not re.search(r"--(address|basic[_-]auth|oauth2|auth)", argv)
    from_secrets: set[str] = set()
    for ref in container["envFrom"]:
        if "secretRef" in ref:
            from_secrets |= _secret_keys(ref["secretRef"]["name"])
    literal = set()
    for variable in container.get("env", []):
        if "secretKeyRef" in variable.get("valueFrom", {}):
            from_secrets.add(variable["name"])
        elif "value" in variable:
            literal.add(variable["name"])
    assert _flower_auth_is_configured(from_secrets)
    assert not literal & {"FLOWER_BASIC_AUTH", "FLOWER_OAUTH2_SECRET", "FLOWER_OAUTH2_KEY"}
    assert "FLOWER_UNAUTHENTICATED_API" not in from_secrets | literal
    # Flower needs the broker only: no provider key, webhook secret or tenant key reaches it.
    assert not (from_secrets | literal) & {"RUNWARE_API_KEY", "WEBHOOK_SECRETS", "API_KEYS"}


def test_k8s_flower_listens_on_loopback_or_behind_a_network_policy() -> None:
    container = _flower_container()
    address = next(
        (variable for variable in container.get("env", [])
         if variable["name"] == "FLOWER_ADDRESS"), None,
    )  # fmt: skip
    assert address is not None, "unset FLOWER_ADDRESS would be Flower's own default: every address"
    policies = [
        doc for doc in _k8s_documents()
        if doc["kind"] == "NetworkPolicy" and _selects(doc["spec"]["podSelector"], FLOWER_LABELS)
    ]  # fmt: skip
    if "value" in address:
        assert _is_loopback(address["value"]) or policies, address
        assert address["value"] not in {"", "0.0.0.0", "::"}, address  # noqa: S104 - refused
    else:
        assert address["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert policies, "Flower on the pod IP needs a NetworkPolicy"
    receiver_labels = _deployment("imagine-receiver")["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers, "an ingress rule without peers admits everyone"
            for peer in peers:
                assert "ipBlock" not in peer, peer
                assert "namespaceSelector" in peer or "podSelector" in peer, peer
                # An operator's label, never one the pipeline's own pods carry.
                assert not _selects(peer.get("podSelector", {"x": 1}), receiver_labels), peer
                assert peer.get("namespaceSelector", {}).get("matchLabels"), peer
    assert policies, "add the NetworkPolicy even for loopback: it guards a later FLOWER_ADDRESS"
    exposing = [
        doc
        for doc in _k8s_documents()
        if doc["kind"] in {"Service", "Ingress"} and "flower" in json.dumps(doc)
    ]
    assert not exposing, "Flower gets neither a Service nor an Ingress"


def test_compose_publishes_flower_on_loopback_only_with_basic_auth() -> None:
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    flower = services["flower"]
    assert "workers.flower" in " ".join(flower["command"])
    assert not re.search(r"--(address|basic[_-]auth|oauth2|auth)", " ".join(flower["command"]))
    environment = flower["environment"]
    auth = environment.get("FLOWER_BASIC_AUTH", "")
    # From the operator's environment, required, never a value written in the file.
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]*\}", auth), auth
    assert not {"RUNWARE_API_KEY", "WEBHOOK_SECRETS", "API_KEYS"} & set(environment)
    assert flower["ports"], "Flower's port is published for the host's operators"
    for port in flower["ports"]:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", port
        else:
            assert str(port).startswith("127.0.0.1:"), port
    for name, service in services.items():
        if name == "flower":
            continue
        published = [str(port.get("published", "")) if isinstance(port, dict) else str(port)
                     for port in service.get("ports", [])]  # fmt: skip
        assert not any("5555" in port for port in published), name
    # Only Redis shares Flower's network: the receiver cannot reach it.
    networks = set(flower["networks"])
    assert "default" not in networks
    for name, service in services.items():
        if name not in {"flower", "redis"}:
            assert not networks & set(service.get("networks", ["default"])), name
