"""The fleet's Prometheus alert rules and Grafana dashboard, as data (see deploy.monitor).

Metric names are the daemon's /metrics (edge_runtime/metrics.py) and the field-loop
contract's (drift, predictions, kept frames). The thermal gauges (``edgekit_throttled``,
``edgekit_temperature_celsius``) are absent where a device cannot tell (no ``vcgencmd`` on a
Jetson, no thermal zone): there the rule's half stays silent.
"""

from __future__ import annotations

from typing import Any

JOB = "edgekit"
SEL = f'job="{JOB}"'


def _alert(name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def alert_rules(stale_after_s: int = 60, max_temp_c: float = 80.0) -> dict[str, Any]:
    """The rule file: one group, one alert per way a device stops doing its job."""
    n = int(stale_after_s)
    rules = [
        _alert("EdgekitDaemonDown", f"up{{{SEL}}} == 0", "2m", "critical",
               "{{ $labels.host }}: the edgekit daemon does not answer /metrics",
               "Prometheus cannot scrape {{ $labels.instance }}: the daemon or the device is "
               "down, unreachable, or answers 401 (wrong token in secrets/)."),
        _alert("EdgekitNoFreshFrames",
               f"edgekit_seconds_since_last_result{{{SEL}}} > {n}"
               f" or (edgekit_seconds_since_last_result{{{SEL}}} < 0"
               f" and on (job, instance) (time() - process_start_time_seconds{{{SEL}}}) > {n})",
               "1m", "critical",
               f"{{{{ $labels.host }}}}: no frame classified for over {n} s",
               "The daemon runs but classifies nothing: camera unplugged, stalled or still "
               "reconnecting (see /healthz last_error)."),
        _alert("EdgekitSelftestFailing", f'edgekit_info{{{SEL}, selftest="fail"}} == 1', "",
               "critical", "{{ $labels.host }}: model self-test failing",
               "{{ $labels.model }} does not reproduce its golden outputs on this device "
               "and is served anyway (model.selftest: warn): its answers are suspect."),
        _alert("EdgekitReloadFailures",
               f"increase(edgekit_model_reload_failures_total{{{SEL}}}[15m]) > 0", "",
               "warning", "{{ $labels.host }}: a model reload failed",
               "A reload (SIGHUP) was refused; the old model keeps serving. "
               "/healthz last_reload_error says why."),
        _alert("EdgekitConfidenceDrift", f"edgekit_confidence_drift_alert{{{SEL}}} == 1",
               "5m", "warning",
               "{{ $labels.host }}: confidence drifted from the validation baseline",
               "The model's top-1 confidences and classes no longer look like validation "
               "(drift {{ $value }}): the scene or camera changed; review kept frames."),
        _alert("EdgekitThermalThrottling",
               f"edgekit_throttled{{{SEL}}} > 0 or edgekit_temperature_celsius{{{SEL}}}"
               f" >= {max_temp_c:g}", "5m", "warning",
               "{{ $labels.host }}: throttling or too hot",
               f"The SoC throttles, caps its clock, is under-volted, or is at {max_temp_c:g} C "
               "or more: latency and fps suffer. Check cooling and the power supply."),
        _alert("EdgekitKeepQuotaFull",
               f"edgekit_keep_bytes{{{SEL}}} >= 0.95 * edgekit_keep_quota_bytes{{{SEL}}}"
               f" and edgekit_keep_quota_bytes{{{SEL}}} > 0", "5m", "warning",
               "{{ $labels.host }}: kept-frames quota nearly full",
               "Kept frames use 95% or more of keep quota: new ones are dropped "
               "(edgekit_keep_dropped_total). Collect them from the device."),
    ]
    return {"groups": [{"name": "edgekit", "rules": rules}]}


DS = {"type": "prometheus", "uid": "${datasource}"}
PSEL = f'{SEL}, instance=~"$instance"'


def _target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def _panel(pid: int, title: str, kind: str, pos: tuple[int, int, int, int],
           targets: list[dict[str, Any]], unit: str = "", **extra: Any) -> dict[str, Any]:
    x, y, w, h = pos
    panel = {"id": pid, "title": title, "type": kind, "datasource": DS,
             "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
             "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []}}
    panel.update(extra)
    return panel


def _fleet_table() -> dict[str, Any]:
    cols = [("up", f"up{{{PSEL}}}"), ("fps", f"edgekit_fps{{{PSEL}}}"),
            ("since last frame", f"edgekit_seconds_since_last_result{{{PSEL}}}"),
            ("drift", f"edgekit_confidence_drift{{{PSEL}}}"),
            ("info", f"edgekit_info{{{PSEL}}}")]
    targets = [_target(expr, name, chr(65 + i), format="table", instant=True)
               for i, (name, expr) in enumerate(cols)]
    hide = {k: True for k in ("Time", "__name__", "job", "instance", "groups", "delegate",
                              "version", "Value #E")}
    return _panel(1, "Fleet", "table", (0, 0, 24, 7), targets, transformations=[
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": hide, "renameByName": {
            "Value #A": "up", "Value #B": "fps", "Value #C": "s since last frame",
            "Value #D": "drift", "model_sha256": "model sha256"}}}])


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard (import it; pick the Prometheus data source when asked)."""
    rate = "$__rate_interval"
    panels = [
        _fleet_table(),
        _panel(2, "Frames per second", "timeseries", (0, 7, 12, 8),
               [_target(f"edgekit_fps{{{PSEL}}}", "{{host}}")]),
        _panel(3, "Inference latency p50 / p95", "timeseries", (12, 7, 12, 8), [
            _target(f"histogram_quantile(0.5, sum by (host, le) (rate("
                    f"edgekit_inference_seconds_bucket{{{PSEL}}}[{rate}])))", "{{host}} p50"),
            _target(f"histogram_quantile(0.95, sum by (host, le) (rate("
                    f"edgekit_inference_seconds_bucket{{{PSEL}}}[{rate}])))", "{{host}} p95",
                    "B")], unit="s"),
        _panel(4, "Frame age (capture to result)", "timeseries", (0, 15, 12, 8), [
            _target(f"edgekit_last_frame_age_seconds{{{PSEL}}}", "{{host}} last"),
            _target(f"histogram_quantile(0.95, sum by (host, le) (rate("
                    f"edgekit_frame_age_seconds_bucket{{{PSEL}}}[{rate}])))", "{{host}} p95",
                    "B"),
            _target(f"edgekit_seconds_since_last_result{{{PSEL}}}", "{{host}} since last",
                    "C")], unit="s"),
        _panel(5, "Top-1 confidence", "heatmap", (12, 15, 12, 8), [
            _target(f"sum by (le) (increase(edgekit_top1_confidence_bucket{{{PSEL}}}"
                    f"[{rate}]))", "{{le}}", format="heatmap")],
               options={"calculate": False, "yAxis": {"unit": "percentunit"},
                        "color": {"scheme": "Viridis"}}),
        _panel(6, "Confidence drift", "timeseries", (0, 23, 12, 8), [
            _target(f"edgekit_confidence_drift{{{PSEL}}}", "{{host}}"),
            _target(f"edgekit_confidence_drift_alert{{{PSEL}}}", "{{host}} alert", "B")]),
        _panel(7, "Predictions by label", "timeseries", (12, 23, 12, 8), [
            _target(f"sum by (label) (rate(edgekit_predictions_total{{{PSEL}}}[{rate}]))",
                    "{{label}}")], unit="ops"),
        _panel(8, "Kept frames: quota used", "timeseries", (0, 31, 12, 7), [
            _target(f"edgekit_keep_bytes{{{PSEL}}} / edgekit_keep_quota_bytes{{{PSEL}}}",
                    "{{host}}")], unit="percentunit"),
        _panel(9, "Kept and dropped frames", "timeseries", (12, 31, 12, 7), [
            _target(f"sum by (reason) (rate(edgekit_kept_frames_total{{{PSEL}}}[{rate}]))",
                    "kept {{reason}}"),
            _target(f"sum by (cause) (rate(edgekit_keep_dropped_total{{{PSEL}}}[{rate}]))",
                    "dropped {{cause}}", "B")], unit="ops"),
    ]
    templating = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        {"name": "instance", "label": "Device", "type": "query", "datasource": DS,
         "query": {"query": f"label_values(edgekit_info{{{SEL}}}, instance)",
                   "refId": "instance"},
         "definition": f"label_values(edgekit_info{{{SEL}}}, instance)",
         "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}},
    ]
    return {"title": "edgekit fleet", "uid": "edgekit-fleet", "tags": ["edgekit"],
            "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "timezone": "utc",
            "templating": {"list": templating}, "annotations": {"list": []},
            "panels": panels}


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard (for checks against a real Prometheus)."""
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
