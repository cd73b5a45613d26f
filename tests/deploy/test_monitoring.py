"""deploy/prometheus and deploy/grafana: the monitoring profile, alert rules and dashboard."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy.files import (
    COMPOSE_VARIABLE,
    ROOT,
    compose_default,
    compose_service,
    service_command,
)


def test_monitoring_profile(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    for name in ("prometheus", "grafana", "exporter"):
        assert compose_service(compose, name).get("profiles") == ["monitoring"], name
    for name, service in compose["services"].items():
        if name not in ("prometheus", "grafana", "exporter"):
            assert "profiles" not in service, f"{name} must run without a profile"
    worker_env = compose_service(compose, "worker")["environment"]
    metrics_port = int(compose_default(worker_env["WORKER_METRICS_PORT"], env_example))
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["flashsale-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["type"] == "A" and dns["port"] == metrics_port
    exporter_port = service_command(compose_service(compose, "exporter"))[-1]
    assert jobs["flashsale-exporter"]["static_configs"][0]["targets"] == [
        f"exporter:{exporter_port}"
    ]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    volumes = [str(v) for v in compose_service(compose, "prometheus")["volumes"]]
    assert "./deploy/prometheus:/etc/prometheus:ro" in volumes
    grafana = compose_service(compose, "grafana")
    volumes = [str(v) for v in grafana["volumes"]]
    assert "./deploy/grafana/flashsale.json:/var/lib/grafana/dashboards/flashsale.json:ro" in (
        volumes
    )
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/flashsale.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    auth = str(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
    match = COMPOSE_VARIABLE.fullmatch(auth)
    assert match and match.group(2) == ":?", "Grafana's admin password must be required"


RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
PROM_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def _balanced(expr: str) -> bool:
    """True when brackets pair up and quotes close, outside of quoted strings."""
    stack: list[str] = []
    quote = ""
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in expr:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and not quote


@pytest.fixture(scope="module")
def alert_rules() -> dict[str, dict[str, Any]]:
    """Alert name -> rule, after checking the file is Prometheus's rule format."""
    data = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert isinstance(data, dict) and set(data) == {"groups"}
    rules: dict[str, dict[str, Any]] = {}
    group_names = [group["name"] for group in data["groups"]]
    assert len(set(group_names)) == len(group_names), "group names must be unique"
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group.keys()
        assert isinstance(group["name"], str) and group["name"]
        assert isinstance(group["rules"], list) and group["rules"]
        for rule in group["rules"]:
            assert isinstance(rule, dict) and set(rule) <= RULE_KEYS, rule
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule["expr"]
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert PROM_DURATION.fullmatch(str(rule[key])), rule[key]
            for key in ("labels", "annotations"):
                mapping = rule.get(key, {})
                assert isinstance(mapping, dict), rule
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
            if "alert" in rule:
                assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
                assert rule["alert"] not in rules, f"duplicate alert {rule['alert']}"
                assert rule.get("annotations", {}).get("summary"), rule["alert"]
                rules[rule["alert"]] = rule
    return rules


def _duration_prom_s(text: str) -> float:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * scale[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def test_alert_rules_cover_the_operators_cases(alert_rules: dict[str, dict[str, Any]]) -> None:
    def alert_on(*needles: str) -> dict[str, Any]:
        found = [r for r in alert_rules.values() if all(n in r["expr"] for n in needles)]
        assert found, f"no alert whose expr has {needles}"
        return found[0]

    node_down = alert_on("flashsale_lock_node_up", "== 0")
    assert _duration_prom_s(node_down["for"]) >= 60
    margin = alert_on("flashsale_lock_node_up", "floor(count", "<= 0")
    assert margin["labels"]["severity"] == "critical"
    failing = alert_on("flashsale_orders_total", 'status="failed"')
    assert "lock_unavailable" in failing["expr"] and "database_unavailable" in failing["expr"]
    alert_on("flashsale_oldest_open_order_age_seconds", ">")
    alert_on('up{job="flashsale-worker"}', "== 0")
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in alert_rules.values():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} queries unknown job {job}"


def test_dashboard_is_grafana_json_with_every_panel_queried() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/flashsale.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    text = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert all(_balanced(t["expr"]) for p in dashboard["panels"] for t in p["targets"])
    for name in (
        "flashsale_lock_node_up",
        "flashsale_lock_acquire_seconds_bucket",
        "flashsale_orders_total",
        "flashsale_order_decision_seconds_bucket",
        "flashsale_settlement_batch_orders_bucket",
        "flashsale_open_orders",
    ):
        assert name in text, name
