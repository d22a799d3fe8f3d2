"""The alerting rules and the Grafana dashboard in deploy/ name only metrics and labels the
gateway exports (read from its own exposition, every metric touched once)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import yaml

from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import BackendErrorKind, DirectoryCounts
from tests.unit.adapters.metrics.fakes import ClientSockets

ROOT: Final = Path(__file__).resolve().parents[3]
RULES: Final = ROOT / "deploy" / "prometheus" / "kalami-gateway.rules.yml"
DASHBOARD: Final = ROOT / "deploy" / "grafana" / "kalami-gateway.json"
# Labels Prometheus itself adds (target labels) or histogram buckets carry.
SCRAPE_LABELS: Final = {"instance", "job", "le"}
_METRIC: Final = re.compile(r"\b((?:kalami|process)_[a-z_]+)\b(\{[^}]*\})?")
_MATCHER: Final = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Every sample name of the gateway's exposition with the labels it carries."""
    sockets = ClientSockets()
    metrics = PrometheusMetrics(InstanceConnections(), sockets.capacity)
    metrics.http_request("/api/{path}", 502)
    metrics.proxy_latency(0.01)
    metrics.message_received("ping")
    metrics.audio_received(100)
    metrics.turn_finished("ok", 1.0)
    metrics.backend_error(BackendErrorKind.TIMEOUT)
    metrics.connection_closed("slow_consumer")
    metrics.session_cleanup("gave_up")
    metrics.session_parking("expired")
    metrics.cluster(DirectoryCounts(instances=1, connections=1, users=1))
    sockets.past_the_ceiling(handshakes=1)
    sockets.capacity.accept_failed("EMFILE")
    samples: dict[str, set[str]] = {}
    for line in metrics.render().decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        assert match, line
        name, labels = match.groups()
        samples.setdefault(name, set()).update(re.findall(r"([a-z_]+)=\"", labels or ""))
    return samples


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and every dashboard panel target."""
    found = []
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"rule {rule['alert']}", rule["expr"]))
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


def problems_of(where: str, expr: str, samples: dict[str, set[str]]) -> list[str]:
    problems = []
    labels_here: set[str] = set(SCRAPE_LABELS)
    for name, selector in _METRIC.findall(expr):
        if name not in samples:
            problems.append(f"{where}: {name} is not exported")
            continue
        labels_here |= samples[name]
        for label in _MATCHER.findall(selector or ""):
            if label not in samples[name]:
                problems.append(f"{where}: {name} has no label {label!r}")
    for grouping in _GROUPING.findall(expr):
        for label in (item.strip() for item in grouping.split(",") if item.strip()):
            if label not in labels_here:
                problems.append(f"{where}: no metric here has the label {label!r}")
    return problems


def test_every_rule_and_panel_names_only_what_the_gateway_exports() -> None:
    samples = exported()
    found = expressions()
    assert len(found) > 15
    problems = [p for where, expr in found for p in problems_of(where, expr, samples)]
    assert problems == []


def test_the_check_itself_catches_a_wrong_name_and_a_wrong_label() -> None:
    samples = exported()
    assert problems_of("x", "rate(kalami_no_such_total[5m])", samples)
    assert problems_of("x", 'rate(kalami_voice_turns_total{kind="ok"}[5m])', samples)
    assert problems_of("x", "sum by (status) (rate(kalami_voice_turns_total[5m]))", samples)
    assert not problems_of(
        "x", 'sum by (outcome) (kalami_voice_turns_total{outcome="ok"})', samples
    )
