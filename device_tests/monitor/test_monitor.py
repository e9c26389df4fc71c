"""``python -m deploy monitor`` against promtool and a real Prometheus scraping three daemons.

Needs Debian's ``prometheus`` package (promtool, prometheus) and ansible-core (the deploy
extra); ``make test-monitor`` installs both. The daemons run Coral's MobileNetV2 on a
generated video (the model the deploy tests ship); each piece skips with its reason when
absent.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from deploy.monitor_rules import alert_rules, dashboard, dashboard_exprs
from tests.conftest import CORAL, run_cli, wait_for
from tests.test_daemon import DaemonProcess

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
ANSIBLE = (Path(sys.executable).parent / "ansible-inventory").is_file() or \
    shutil.which("ansible-inventory")
MODEL = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
TOKEN = "fleet-s3cret"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(make test-monitor: apt-get install prometheus)")
needs_ansible = pytest.mark.skipif(not ANSIBLE, reason="ansible-inventory not installed "
                                   "(pip install -e '.[deploy]')")

INI = """\
[pis]
pi1 ansible_host=10.0.0.5 edgekit_metrics_port=9100
pi2 ansible_host=10.0.0.6 edgekit_model_sha256={sha}

[jetsons]
nano ansible_host=10.0.0.7 edgekit_http_token=other

[edgekit:children]
pis
jetsons

[pis:vars]
edgekit_profile={profile}
"""


@pytest.fixture()
def profile(tmp_path) -> Path:
    p = tmp_path / "pi.yaml"
    p.write_text("name: pi-fleet\nhttp:\n  enabled: true\n  host: 0.0.0.0\n  port: 8088\n")
    return p


@needs_ansible
@needs_promtool
def test_ini_inventory_to_valid_config_labels_ports_and_secret_tokens(tmp_path, profile):
    inv = tmp_path / "hosts.ini"
    inv.write_text(INI.format(sha="ab" * 32, profile=profile))
    (tmp_path / "tok").write_text(TOKEN + "\n")
    out = tmp_path / "mon"
    r = run_cli("deploy", "monitor", "--inventory", str(inv), "--out", str(out),
                "--token-file", str(tmp_path / "tok"), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert set(lines) == {"pi1", "pi2", "nano"}, r.stdout
    assert "10.0.0.5:9100" in lines["pi1"] and "10.0.0.6:8088" in lines["pi2"]
    assert "10.0.0.7:8080" in lines["nano"]  # no profile: the daemon's default port
    targets = {t["labels"]["host"]: t for f in sorted((out / "targets").glob("*.json"))
               for t in json.loads(f.read_text())}
    assert targets["pi1"]["targets"] == ["10.0.0.5:9100"]
    assert targets["pi1"]["labels"]["groups"] == ",edgekit,pis,"
    assert targets["pi1"]["labels"]["profile"] == "pi-fleet"
    assert targets["pi2"]["labels"]["model_sha256"] == "ab" * 32
    assert "model_sha256" not in targets["pi1"]["labels"]
    cfg = (out / "prometheus.yml").read_text()
    assert TOKEN not in cfg and "other" not in cfg  # tokens only in secrets/
    jobs = yaml.safe_load(cfg)["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["edgekit", "edgekit-2"]
    files = {j["job_name"]: out / j["authorization"]["credentials_file"] for j in jobs}
    assert {f.read_text().strip() for f in files.values()} == {TOKEN, "other"}
    assert all(f.stat().st_mode & 0o077 == 0 for f in files.values())
    for args in (("check", "config", str(out / "prometheus.yml")),
                 ("check", "rules", str(out / "rules/edgekit.rules.yml"))):
        p = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
    board = json.loads((out / "grafana/edgekit-fleet.json").read_text())
    assert {p["title"] for p in board["panels"]} >= {
        "Fleet", "Frames per second", "Inference latency p50 / p95",
        "Frame age (capture to result)", "Top-1 confidence", "Confidence drift"}


@needs_ansible
def test_bad_inventory_and_bad_host_one_line_each(tmp_path, profile):
    bad = tmp_path / "bad.ini"
    bad.write_text("[pis\npi1 = = x\n")
    r = run_cli("deploy", "monitor", "--inventory", str(bad), "--out", str(tmp_path / "o"),
                timeout=120)
    assert r.returncode == 1 and not (tmp_path / "o").exists()
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "inventory does not parse" in r.stderr and str(bad) in r.stderr
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {
        "good": {"ansible_host": "127.0.0.1", "edgekit_profile": str(profile)},
        "broken": {"edgekit_profile": str(tmp_path / "missing.yaml")},
        "badport": {"edgekit_metrics_port": "http"}}}}))
    r = run_cli("deploy", "monitor", "--inventory", str(inv), "--out", str(tmp_path / "o"),
                timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert "missing.yaml" in lines["broken"] and "left out" in lines["broken"]
    assert "expected a port" in lines["badport"]
    assert "127.0.0.1:8088" in lines["good"]  # the others go on
    assert "Traceback" not in r.stderr


# --- promtool test rules: every alert fires where it should and stays silent elsewhere ---

def _series(metric: str, host: str, values: str, **labels: str) -> dict:
    lab = {"job": "edgekit", "instance": host, "host": host, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in lab.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _expect(rule: dict, host: str, value: str = "1", **labels: str) -> dict:
    lab = {"job": "edgekit", "instance": host, "host": host, **labels}
    ann = {}
    for k, text in rule["annotations"].items():
        for var, val in (("$labels.host", host), ("$labels.instance", host),
                         ("$labels.model", labels.get("model", "")), ("$value", value)):
            text = text.replace("{{ " + var + " }}", val)
        ann[k] = text
    return {"exp_labels": {**lab, **rule["labels"]}, "exp_annotations": ann}


def _case(name: str, series: list[dict], fire_at: str, firing: list[tuple],
          silent_at: str) -> dict:
    rule = next(r for r in alert_rules()["groups"][0]["rules"] if r["alert"] == name)
    return {"interval": "15s", "input_series": series, "alert_rule_test": [
        {"eval_time": fire_at, "alertname": name,
         "exp_alerts": [_expect(rule, *f[:1], **f[1]) if len(f) > 1 else _expect(rule, f[0])
                        for f in firing]},
        {"eval_time": silent_at, "alertname": name, "exp_alerts": []}]}


RULE_CASES = [
    _case("EdgekitDaemonDown", [_series("up", "pi1", "0x40"), _series("up", "pi2", "1x40")],
          "3m", [("pi1",)], "1m"),  # down 1 minute: not yet (for: 2m)
    _case("EdgekitNoFreshFrames", [
        _series("edgekit_seconds_since_last_result", "pi1", "5x4 200x40"),
        _series("edgekit_seconds_since_last_result", "pi2", "1x44"),
        # never classified a frame, up since t=0: fires; pi4 started at 10000 s: silent
        _series("edgekit_seconds_since_last_result", "pi3", "-1x44"),
        _series("process_start_time_seconds", "pi3", "0x44"),
        _series("edgekit_seconds_since_last_result", "pi4", "-1x44"),
        _series("process_start_time_seconds", "pi4", "10000x44")],
        "4m", [("pi1",), ("pi3",)], "1m"),
    _case("EdgekitSelftestFailing", [
        # pi1 restarted at 1m15s with a model that fails its self-test (selftest: warn)
        _series("edgekit_info", "pi1", "1x4", model="m.tflite", selftest="pass"),
        _series("edgekit_info", "pi1", "_x5 1x20", model="m.tflite", selftest="fail"),
        _series("edgekit_info", "pi2", "1x20", model="m.tflite", selftest="pass")],
        "2m", [("pi1", {"model": "m.tflite", "selftest": "fail"})], "1m"),
    _case("EdgekitReloadFailures", [
        _series("edgekit_model_reload_failures_total", "pi1", "0 0 0 0 1x200"),
        _series("edgekit_model_reload_failures_total", "pi2", "0x204")],
        "3m", [("pi1",)], "40m"),  # a failure 15 minutes old is no longer news
    _case("EdgekitConfidenceDrift", [
        _series("edgekit_confidence_drift_alert", "pi1", "0 0 1x60"),
        _series("edgekit_confidence_drift_alert", "pi2", "0x62")],
        "8m", [("pi1",)], "3m"),
    _case("EdgekitThermalThrottling", [
        _series("edgekit_throttled", "pi1", "1x40"),
        _series("edgekit_temperature_celsius", "pi1", "70x40"),
        _series("edgekit_throttled", "pi2", "0x40"),
        _series("edgekit_temperature_celsius", "pi2", "65x40"),
        _series("edgekit_throttled", "pi3", "0x40"),
        _series("edgekit_temperature_celsius", "pi3", "85x40")],
        "7m", [("pi1",), ("pi3",)], "2m"),
    _case("EdgekitKeepQuotaFull", [
        _series("edgekit_keep_bytes", "pi1", "96x40"),
        _series("edgekit_keep_quota_bytes", "pi1", "100x40"),
        _series("edgekit_keep_bytes", "pi2", "50x40"),
        _series("edgekit_keep_quota_bytes", "pi2", "100x40"),
        _series("edgekit_keep_bytes", "pi3", "10x40"),  # no quota set: never "full"
        _series("edgekit_keep_quota_bytes", "pi3", "0x40")],
        "7m", [("pi1",)], "2m"),
]


@needs_promtool
def test_every_alert_fires_and_stays_silent(tmp_path):
    rules = tmp_path / "edgekit.rules.yml"
    rules.write_text(yaml.safe_dump(alert_rules(), sort_keys=False))
    names = {r["alert"] for r in alert_rules()["groups"][0]["rules"]}
    tested = {t["alert_rule_test"][0]["alertname"] for t in RULE_CASES}
    assert tested == names  # a new alert needs its case here
    spec = tmp_path / "rules_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "15s",
                                    "tests": RULE_CASES}, sort_keys=False))
    p = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    # The fixtures can fail: a silent case that fires is reported.
    broken = json.loads(json.dumps(RULE_CASES))
    broken[0]["alert_rule_test"][1]["eval_time"] = "5m"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "tests": broken}))
    p = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "EdgekitDaemonDown" in p.stdout + p.stderr


# --- a real Prometheus scraping three daemons on 127.0.0.1 ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, expr: str) -> dict:
    url = base + "api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # a bad expression: 400 with the parser's error
        return json.loads(e.read())


@pytest.fixture()
def daemons(tmp_path):
    if not MODEL.is_file():
        pytest.skip(f"Coral's model not found in {CORAL}: run `make test-data`")
    from train.sample_data import generate as sample_data

    video = sample_data(tmp_path / "sample", per_class=1, frames=30, seed=1) / "video.avi"
    procs = []
    try:
        for _ in range(3):
            procs.append(DaemonProcess(
                "--model", str(MODEL), "--source", str(video), "--loop", "--http",
                "127.0.0.1:0", "--set", "camera.realtime=true", "--set", "camera.fps=5",
                "--set", "output.jsonl=off", env={"EDGEKIT_HTTP_TOKEN": TOKEN}))
        yield procs
    finally:
        for d in procs:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture()
def prometheus(tmp_path):
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (make test-monitor: apt-get install prometheus)")
    procs = []

    def start(config: Path) -> str:
        port = _free_port()
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w")))
        base = f"http://127.0.0.1:{port}/"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(base + "-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                assert procs[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
                return False
        wait_for(ready, timeout=60, every=0.2)
        return base

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        finally:
            p.kill()


@needs_ansible
def test_real_prometheus_scrapes_three_daemons(tmp_path, daemons, prometheus):
    t0 = time.monotonic()
    ports = [int(d.url.rstrip("/").rsplit(":", 1)[1]) for d in daemons]
    hosts = {f"dev{i + 1}": {"ansible_host": "127.0.0.1", "edgekit_metrics_port": p}
             for i, p in enumerate(ports)}
    extra = {"gone": {"ansible_host": "127.0.0.1", "edgekit_metrics_port": _free_port()},
             "wrongtok": {"ansible_host": "127.0.0.1", "edgekit_metrics_port": ports[0],
                          "edgekit_http_token": "not-the-token"}}
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "cams": {"hosts": hosts}, "broken": {"hosts": extra}}}}))
    (tmp_path / "tok").write_text(TOKEN)
    out = tmp_path / "monitoring"
    r = run_cli("deploy", "monitor", "--inventory", str(inv), "--out", str(out),
                "--token-file", str(tmp_path / "tok"), "--model", str(MODEL),
                "--scrape-interval", "1s", "--check", timeout=120)
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert r.returncode == 1, r.stdout + r.stderr  # two hosts fail their check
    assert all(lines[h].endswith("  ok") for h in hosts), r.stdout
    assert "unreachable" in lines["gone"], r.stdout
    assert "401: the daemon refuses this token" in lines["wrongtok"], r.stdout
    base = prometheus(out / "prometheus.yml")

    def fps_of_each() -> dict | None:
        res = _query(base, "edgekit_fps > 0")["data"]["result"]
        return {s["metric"]["host"]: s for s in res} if len(res) == 3 else None
    fps = wait_for(fps_of_each, timeout=60, every=0.5)
    assert set(fps) == set(hosts)
    from edge_runtime.selftest import file_sha256

    sha = file_sha256(MODEL)
    for host, s in fps.items():
        assert 0 < float(s["value"][1]) < 50, s
        assert s["metric"]["model_sha256"] == sha and s["metric"]["groups"] == ",cams,"
        assert s["metric"]["instance"] == host and s["metric"]["job"] == "edgekit"

    def down() -> dict | None:
        res = _query(base, "up == 0")["data"]["result"]
        got = {s["metric"]["host"]: s["metric"]["job"] for s in res}
        return got if len(got) >= 2 else None  # each token's job has its own first scrape
    assert wait_for(down, timeout=30, every=0.5) == {"gone": "edgekit", "wrongtok": "edgekit"}
    for expr in dashboard_exprs(dashboard()):  # every panel's query parses and runs
        doc = _query(base, expr.replace("$__rate_interval", "1m").replace("$instance", ".*"))
        assert doc["status"] == "success", (expr, doc)

    def evaluated() -> list | None:
        with urllib.request.urlopen(base + "api/v1/rules", timeout=10) as resp:
            rules = json.loads(resp.read())["data"]["groups"][0]["rules"]
        done = all(not ru["lastEvaluation"].startswith("0001") for ru in rules)
        return rules if done else None
    rules = wait_for(evaluated, timeout=30, every=0.5)
    assert len(rules) == 7 and all(ru["health"] == "ok" for ru in rules), rules
    print(f"\nmonitor end-to-end: {time.monotonic() - t0:.1f} s (3 daemons scraped, "
          f"fps {sorted(round(float(s['value'][1]), 1) for s in fps.values())})")
