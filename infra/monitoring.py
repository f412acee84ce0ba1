"""The alert rules and the dashboard, the metric names in their PromQL, a Prometheus config."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infra.supervise import REPO_ROOT, Service

ALERTS_PATH = REPO_ROOT / "infra" / "prometheus" / "alerts.yml"
DASHBOARD_PATH = REPO_ROOT / "infra" / "grafana" / "imagine-dashboard.json"
# The pipeline's own metrics and Flower's: the names the rules and the dashboard may use.
_METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])(?:imagine|flower)_[A-Za-z0-9_:]+")
# A label value may look like a metric name; PromQL strings are dropped before the names are read.
_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SAMPLE_NAME = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)")
# The series of a family by its declared type (a counter is declared under its _total name).
_FAMILY_SERIES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """The imagine_* and flower_* series names a PromQL expression reads (a histogram's as
    name_bucket, name_sum or name_count, as written)."""
    return set(_METRIC_NAME.findall(_PROMQL_STRING.sub('""', expr)))


def rule_expressions(path: Path = ALERTS_PATH) -> dict[str, str]:
    """Each alerting or recording rule's expression, by its name."""
    import yaml  # only the tests read the rules from Python

    document = yaml.safe_load(path.read_text())
    return {
        rule.get("alert") or rule["record"]: str(rule["expr"])
        for group in document["groups"]
        for rule in group["rules"]
    }


def dashboard_panels(path: Path = DASHBOARD_PATH) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows included."""
    stack = list(json.loads(path.read_text())["panels"])
    while stack:
        panel = stack.pop(0)
        yield panel
        stack.extend(panel.get("panels", []))


def dashboard_expressions(path: Path = DASHBOARD_PATH) -> dict[str, str]:
    """Each query of the dashboard, by "<panel title> (panel <id>) [<refId>]"."""
    return {
        f"{panel['title']} (panel {panel['id']}) [{target['refId']}]": target["expr"]
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
        if "expr" in target
    }


def exposed_names(text: str) -> set[str]:
    """The series names a Prometheus text exposition serves: those with samples, and those of a
    family it declares without any yet (a labelled gauge with no label set to report)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            fields = line.split()  # "#", "TYPE", name, type
            if len(fields) == 4:
                names |= {fields[2] + end for end in _FAMILY_SERIES.get(fields[3], ("",))}
        elif line and not line.startswith("#"):
            match = _SAMPLE_NAME.match(line)
            if match:
                names.add(match.group(1))
    return names


# --- a Prometheus that scrapes the local stack ---------------------------------------------------


@dataclass(frozen=True)
class ScrapeTarget:
    """One /metrics endpoint: its job name, full URL, extra labels and basic auth (user:pass)."""

    job: str
    url: str
    labels: Mapping[str, str] = field(default_factory=dict)
    basic_auth: str | None = None


def scrape_targets(services: Iterable[Service], flower_auth: str | None) -> list[ScrapeTarget]:
    """The metrics endpoints of the receiver, each worker (labelled worker=<name>) and Flower
    (behind its basic auth) among services."""
    targets = []
    for service in services:
        name, url = service.name, service.metrics_url
        if url is None:
            continue
        if name == "receiver":
            targets.append(ScrapeTarget("imagine-receiver", url))
        elif name.startswith("worker-"):
            targets.append(ScrapeTarget("imagine-worker", url, {"worker": name[len("worker-") :]}))
        elif name == "flower":
            targets.append(ScrapeTarget("imagine-flower", url, basic_auth=flower_auth))
    return targets


def prometheus_config(
    targets: Iterable[ScrapeTarget],
    rule_files: Sequence[Path] = (ALERTS_PATH,),
    *,
    interval: str = "5s",
) -> dict[str, Any]:
    """Prometheus's configuration: one scrape job per target job name, the rules loaded."""
    jobs: dict[str, dict[str, Any]] = {}
    for target in targets:
        url = urlsplit(target.url)
        job = jobs.setdefault(
            target.job,
            {
                "job_name": target.job,
                "scheme": url.scheme,
                "metrics_path": url.path or "/metrics",
                "static_configs": [],
            },
        )
        if target.basic_auth is not None:
            user, _, password = target.basic_auth.partition(":")
            job["basic_auth"] = {"username": user, "password": password}
        job["static_configs"].append({"targets": [url.netloc], "labels": dict(target.labels)})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": list(jobs.values()),
    }


def write_prometheus_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write config as JSON, which Prometheus's YAML reader takes; readable by its owner only,
    since it holds Flower's password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
