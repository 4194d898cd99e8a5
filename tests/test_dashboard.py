"""deploy/dashboard.json: every query names series and labels this service exposes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from scoreboard.http import spec
from scoreboard.metrics import DURATION_LABELS, OUTCOMES, Metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "dashboard.json"
CONTRACT_METRICS = (
    "scoreboard_score_updates_total",
    "scoreboard_auth_failures_total",
    "scoreboard_cache_requests_total",
    "scoreboard_stream_clients",
    "scoreboard_http_request_duration_seconds",
    "scoreboard_sink_events_total",
    "scoreboard_sink_lag_events",
)
SERIES = re.compile(r"\b((?:scoreboard|process)_[a-z_]+)\b")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return data


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exposed() -> dict[str, set[str]]:
    """Every series name the registry exposes, with the label names it carries."""
    out: dict[str, set[str]] = {}
    for family in Metrics().registry.collect():
        names = {family.name, *(s.name for s in family.samples)}
        labels = {k for s in family.samples for k in s.labels}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
            labels |= {"le"}
        for name in names:
            out.setdefault(name, set()).update(labels)
    # Labelled families with no child yet (the contract's label names).
    out["scoreboard_auth_failures_total"] |= {"reason"}
    for suffix in ("_bucket", "_count", "_sum"):
        out["scoreboard_http_request_duration_seconds" + suffix] |= set(DURATION_LABELS)
    return out


def test_every_contract_metric_has_a_panel(dashboard: dict[str, Any]) -> None:
    text = "\n".join(exprs(dashboard))
    for name in CONTRACT_METRICS:
        assert name in text, name


def test_the_asked_for_views_exist(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for words in (
        "by outcome",
        "latency",
        "auth failures",
        "hit ratio",
        "live clients",
        "sink lag",
    ):
        assert words in titles, words
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+)", "\n".join(exprs(dashboard))))
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_queries_name_real_series_and_labels(dashboard: dict[str, Any]) -> None:
    series = exposed()
    routes = {path for _, path in spec.routes()}
    for expr in exprs(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = SERIES.findall(expr)
        assert names, expr
        allowed = set().union(*(series[n] for n in names if n in series)) | {"instance", "job"}
        for name in names:
            assert name in series, f"{name} is not exposed ({expr})"
        for label, op, value in MATCHER.findall(expr):
            assert label in allowed, (label, expr)
            if label == "outcome" and op != "=~":
                assert value in OUTCOMES, value
            if label == "result":
                assert value in ("hit", "miss")
            if label == "route":
                assert any(re.fullmatch(value, r) for r in routes), value
        for group in GROUPING.findall(expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in allowed, (label, expr)


def test_panels_have_unique_ids_and_a_datasource_variable(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
