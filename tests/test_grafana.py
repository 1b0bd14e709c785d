"""Static checks of grafana/: dashboards, provisioning, alert rules and metric hygiene.

Every metric a dashboard or alert names must exist in the gateway's exposition (so a
typo or a renamed metric fails here, even where PromQL would just return nothing),
and no label anywhere in the exposition may hold a phone number or a call id.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.gateway import Gateway
from tests.helpers import MS, RawPeer, make_config, running_gateway
from tests.quality.test_mos_component import until

GRAFANA = Path(__file__).parents[1] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "aigw-prometheus"
TENANTS_TOML = """\
default_agent = "bot"
[tenants.acme]
name = "Acme"
[agents.bot]
tenant = "acme"
backend = "echo"
echo_delay_ms = 100
record = true
recording_source = "gateway"
[agents.talker]
tenant = "acme"
backend = "openai"
greeting = "Hello, this is a long greeting."
"""
# Labels whose values are bounded sets. A new label must be added here on purpose,
# after checking it can never carry a phone number, a call id or a channel name.
BOUNDED_LABELS = {
    "answered_by", "backend", "component", "direction", "le", "outcome", "queue",
    "reason", "source", "stage", "status", "tenant", "when",
}
_METRIC_RE = re.compile(r"\baigw_[a-z0-9_]+\b")
_TEMPLATE_RE = re.compile(r"^label_values\((\w+),\s*\w+\)$")
_ALERT_RE = re.compile(r"^(?P<value>.+?)\s+(?P<op><=|>=|<|>|==|!=)\s+(?P<threshold>[0-9.]+)$")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_PHONE_RE = re.compile(r"\+?\d{7,}")
_UNIQUEID_RE = re.compile(r"^\d{6,}\.\d+$")


def write_tenants(tmp: Path) -> Path:
    path = tmp / "tenants.toml"
    path.write_text(TENANTS_TOML)
    return path


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable, ``$tenant`` -> ``.*``."""
    out: list[tuple[str, str]] = []
    for name, dash in load_dashboards().items():
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{name}#{panel['id']}{target['refId']}",
                            target["expr"].replace("$tenant", ".*")))
        for var in dash.get("templating", {}).get("list", []):
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = _TEMPLATE_RE.match(query)
            assert m, f"{name}: template {var['name']}: only label_values(metric, label)"
            out.append((f"{name}${var['name']}", m.group(1)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_queries() -> list[tuple[str, str]]:
    """(alert, expression with ``bool``): a series even when the alert is not firing."""
    out = []
    for rule in alert_rules():
        m = _ALERT_RE.match(rule["expr"].strip())
        assert m, f"{rule['alert']}: expr must be '<value> <op> <threshold>'"
        out.append((rule["alert"], f"{m['value']} {m['op']} bool {m['threshold']}"))
    return out


def families(text: str) -> dict[str, str]:
    """Family name -> type, from an exposition (families without samples included)."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def resolves(name: str, fams: dict[str, str]) -> bool:
    if fams.get(name) in ("gauge", "untyped", "unknown"):
        return True
    for suffix, types in (("_total", ("counter",)), ("_bucket", ("histogram",)),
                          ("_sum", ("histogram", "summary")), ("_count", ("histogram", "summary"))):
        if name.endswith(suffix) and fams.get(name[: -len(suffix)]) in types:
            return True
    return name in fams and fams[name] != "counter"


# --------------------------------------------------------------------------- dashboards


def test_dashboards_are_valid_with_unique_panel_ids() -> None:
    assert {p.name for p in DASHBOARDS} >= {"overview.json", "tenant.json"}
    uids = set()
    for name, dash in load_dashboards().items():
        assert dash["uid"] not in uids, name
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (name, panel["id"])
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), (name, panel["id"])
            assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
    tenant = load_dashboards()["tenant.json"]
    assert [v["name"] for v in tenant["templating"]["list"]] == ["tenant"]
    assert all('tenant=~"$tenant"' in t["expr"] for p in tenant["panels"] for t in p["targets"])


def test_overview_has_the_checklist_panels() -> None:
    exprs = " ".join(e for w, e in dashboard_queries() if w.startswith("overview"))
    for metric in ("aigw_active_calls", "aigw_calls_total", "aigw_call_mos_bucket",
                   "aigw_time_to_first_audio_seconds_bucket", "aigw_barge_in_seconds_bucket",
                   "aigw_pacer_lateness_seconds_bucket", "aigw_playout_underruns_total",
                   "aigw_pacer_missed_ticks_total", "aigw_protocol_errors_total",
                   "aigw_backend_errors_total", "aigw_recordings_captured_total",
                   "aigw_call_cost_dollars_total", "aigw_call_seconds_total"):
        assert metric in exprs, metric


def test_provisioning_and_prometheus_config() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [DATASOURCE_UID]
    assert ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/aigw.yml").read_text())
    assert prov["providers"][0]["type"] == "file"
    prom = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9094"]


def test_alert_rules_cover_the_checklist() -> None:
    rules = {r["alert"]: r["expr"] for r in alert_rules()}
    wanted = {
        "AigwCallSuccessRateLow": "< 0.99", "AigwMosLow": "< 4.0",
        "AigwTimeToGreetingSlow": "> 2", "AigwBargeInSlow": "> 0.5",
        "AigwRecordingCaptureIncomplete": "< 1", "AigwCostPerMinuteHigh": "> 0.02",
        "AigwPlayoutUnderruns": "> 0",
    }
    for alert, tail in wanted.items():
        assert rules[alert].rstrip().endswith(tail), alert
    assert len(alert_queries()) == len(rules)


# --------------------------------------------------------------------------- exposition


def test_every_referenced_metric_exists_in_the_exposition(tmp_path: Path) -> None:
    gw = Gateway(make_config(config=str(write_tenants(tmp_path))))
    fams = families(generate_latest(gw.metrics.registry).decode())
    missing = sorted({
        (where, name)
        for where, expr in dashboard_queries() + alert_queries()
        for name in _METRIC_RE.findall(expr)
        if not resolves(name, fams)
    })
    assert not missing, f"metrics not exported by the gateway: {missing}"


async def test_no_label_can_hold_a_phone_number_or_call_id(tmp_path: Path) -> None:
    # The tenants file has an openai agent: its backend is built (and checked) at start.
    async with running_gateway(config=str(write_tenants(tmp_path)),
                               openai_api_key="sk-test-not-used") as gw:
        peer = await RawPeer.connect(gw.audiosocket.address)
        call_id = peer.send_uuid()
        for _ in range(5):
            peer.send(asp.encode_audio(bytes(320)))
            await asyncio.sleep(20 * MS)
        peer.send(asp.encode_hangup())
        await until(lambda: call_id not in gw.audiosocket.calls)
        await peer.close()
        text = generate_latest(gw.metrics.registry).decode()
    assert "aigw_call_mos_bucket" in text  # the call's end was scored
    problems = []
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("aigw_") or fam.name.startswith(("python_", "process_")), \
            fam.name
        for s in fam.samples:
            for label, value in s.labels.items():
                if label not in BOUNDED_LABELS:
                    problems.append(f"{s.name}: unknown label {label!r}")
                if _UUID_RE.search(value) or _PHONE_RE.search(value) or \
                        _UNIQUEID_RE.match(value):
                    problems.append(f"{s.name}: label {label}={value!r} looks per-call")
    assert call_id not in text
    assert not problems, problems


@pytest.mark.parametrize("expr", ["sum(aigw_active_calls) > bool 1",
                                  "histogram_quantile(0.5, x) < bool 4.0"])
def test_alert_value_side_parser(expr: str) -> None:
    # The real-Prometheus test relies on this shape; keep it honest.
    plain = expr.replace(" bool", "")
    m = _ALERT_RE.match(plain)
    assert m is not None and f"{m['value']} {m['op']} bool {m['threshold']}" == expr
