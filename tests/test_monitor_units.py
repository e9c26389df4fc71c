"""deploy.monitor without Ansible or Prometheus: hosts from inventory variables, scrape jobs
per token, and the rules' and dashboard's metric names against the daemon's (fast)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.monitor import Defaults, Generated, Host, describe_host, scrape_jobs, summary
from deploy.monitor_rules import alert_rules, dashboard, dashboard_exprs
from edge_runtime.errors import EdgekitError
from edge_runtime.selftest import file_sha256

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def profile(tmp_path) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text("name: shop\nhttp:\n  enabled: true\n  port: 8181\n  token: from-profile\n")
    return p


def test_port_address_token_and_model_precedence(tmp_path, profile):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + bytes(100))
    d = Defaults(config=profile, model=model, token=None, port=None)
    h = describe_host("cam1", {"ansible_host": "10.1.1.1"}, ["shop"], tmp_path, d)
    assert (h.target, h.profile, h.token) == ("10.1.1.1:8181", "shop", "from-profile")
    assert h.model_sha256 == file_sha256(model)
    assert any("binds 127.0.0.1" in n for n in h.notes)  # the profile's default bind
    h = describe_host("cam2", {"edgekit_metrics_port": "9200", "edgekit_metrics_host": "::1",
                               "edgekit_http_token": "own", "edgekit_model_sha256": "A" * 64},
                      [], tmp_path, Defaults(config=profile, token="fleet", port=9000))
    assert (h.target, h.token, h.model_sha256, h.notes) == ("[::1]:9200", "own", "a" * 64, ())
    h = describe_host("cam3", {}, [], tmp_path, Defaults(token="fleet", port=9000))
    assert (h.target, h.token, h.profile, h.model_sha256) == ("cam3:9000", "fleet", "", "")


@pytest.mark.parametrize("hv, match", [
    ({"edgekit_metrics_port": 70000}, "expected a port 1..65535"),
    ({"edgekit_model_sha256": "xyz"}, "expected 64 hex digits"),
    ({"edgekit_model": "nowhere.tflite"}, "model file not found"),
    ({"edgekit_http_token": {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256..."}},
     "vault-encrypted"),
    ({"edgekit_profile": "missing.yaml"}, "missing.yaml"),
])
def test_bad_host_variables_say_which(tmp_path, hv, match):
    with pytest.raises(EdgekitError, match=match):
        describe_host("h", hv, [], tmp_path, Defaults())


def test_one_scrape_job_per_token_and_summary_lines():
    hosts = [Host("a", "1.1.1.1", 80, token="t1"), Host("b", "1.1.1.2", 80, token="t2"),
             Host("c", "1.1.1.3", 80, token="t1"), Host("d", "1.1.1.4", 80)]
    jobs = scrape_jobs(hosts)
    assert [(j, t, [h.name for h in m]) for j, t, m in jobs] == [
        ("edgekit", "t1", ["a", "c"]), ("edgekit-2", "t2", ["b"]), ("edgekit-3", None, ["d"])]
    text = summary(Generated([], hosts[:1], []), {"a": "401: the daemon refuses this token"})
    assert text.splitlines()[1].split() == ["a", "1.1.1.1:80", "-", "-", "401:", "the",
                                            "daemon", "refuses", "this", "token"]


def test_rules_and_dashboard_name_metrics_the_daemon_exports():
    source = (ROOT / "edge_runtime" / "metrics.py").read_text()
    exported = set(re.findall(r'"(edgekit_[a-z0-9_]+)"', source))
    exprs = [r["expr"] for r in alert_rules()["groups"][0]["rules"]]
    exprs += dashboard_exprs(dashboard())
    used = {re.sub(r"_(total|bucket|sum|count)$", "", n)
            for e in exprs for n in re.findall(r"\b(edgekit_[a-z0-9_]+)", e)}
    assert used <= exported, used - exported  # a renamed metric breaks a rule
    for rule in alert_rules()["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert "{{ $labels.host }}" in rule["annotations"]["summary"]
