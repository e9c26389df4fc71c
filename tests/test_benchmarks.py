"""benchmarks/: statistics, Pareto front, comparison and --strict, cross-device merge,
environment capture, the progress bar, errors, and one real (tiny) measurement."""

from __future__ import annotations

import ast
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import environment as envmod
from benchmarks.__main__ import EXIT_REGRESSION, main
from benchmarks.analysis import compare, load_results, mark_pareto, pareto_front
from benchmarks.measure import percentiles
from benchmarks.progress import progress
from edge_runtime.errors import EdgekitError
from tests.conftest import ROOT, error_lines, run_cli


def _row(variant: str, threads: int, p50: float, top1: float, size: int = 1000,
         accelerator: str = "cpu", fps: float | None = None) -> dict:
    lat = {"mean": p50, "std": 0.0, "min": p50, "p50": p50, "p90": p50, "p99": p50,
           "max": p50}
    e2e = None if fps is None else {
        "source": "v.avi", "paced_fps": 15.0, "frames_captured": 10, "frames_processed": 10,
        "frames_dropped": 0, "seconds": 1.0, "fps": fps, "latency_ms": lat,
        "frame_age_ms": lat, "inference_ms": lat}
    return {"variant": variant, "threads": threads, "accelerator": accelerator,
            "latency_ms": lat, "pipeline_ms": lat, "load_ms": 1.0, "first_ms": 1.0,
            "throughput_fps": 1000 / p50, "top1": top1, "size_bytes": size,
            "backend": "x 1", "end_to_end": e2e}


def _results(rows: list[dict], cpu: str = "Test CPU", board: str | None = None) -> dict:
    return {"schema_version": 2, "kind": "single", "run": "runs/x", "created": "2026-01-01",
            "environment": {"cpu": cpu, "machine": "x86_64", "cores": 2, "board": board},
            "settings": {"runs": 5, "warmup": 1, "threads": [1]}, "test_images": 4,
            "warnings": [], "rows": rows}


def _write(path: Path, results: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    return path / "results.json"


# --- statistics and Pareto front ----------------------------------------------------------

def test_percentiles_match_numpy_linear_interpolation():
    p = percentiles(list(range(1, 101)))
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01)
    assert (p["min"], p["max"], p["mean"]) == (1.0, 100.0, 50.5)
    assert p["std"] == pytest.approx(np.std(np.arange(1, 101)))
    one = percentiles([3.0])
    assert one["p50"] == one["p99"] == one["min"] == 3.0 and one["std"] == 0.0
    with pytest.raises(ValueError, match="empty sample"):
        percentiles([])


def test_pareto_front():
    # (latency, accuracy): lower latency and higher accuracy are better.
    pts = [(1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (0.5, 0.70), (2.0, 0.90), (4.0, 0.95)]
    assert pareto_front(pts) == [True, True, False, True, True, True]
    assert pareto_front([(1.0, 0.5)]) == [True]
    assert pareto_front([(1.0, 0.9), (1.0, 0.8)]) == [True, False]  # same speed, less accurate


def test_pareto_marked_per_device():
    rows = [{**_row("a", 1, 1.0, 0.9), "device": "pi"}, {**_row("b", 1, 2.0, 0.8), "device": "pi"},
            {**_row("c", 1, 9.0, 0.8), "device": "jetson"}]
    assert mark_pareto(rows) == [True, False, True]


# --- comparison, --strict ---------------------------------------------------------------

def test_compare_flags_regressions_beyond_tolerance():
    old = _results([_row("int8", 1, 1.00, 0.90, fps=15.0), _row("int8", 2, 1.0, 0.9),
                    _row("float32", 1, 2.0, 0.95), _row("gone", 1, 1.0, 0.5)])
    new = _results([_row("int8", 1, 1.25, 0.90, fps=10.0), _row("int8", 2, 1.05, 0.9),
                    _row("float32", 1, 1.5, 0.90)], cpu="Other CPU")
    cmp = compare(new, old, tolerance=0.10, accuracy_tolerance=0.01)
    status = {(c["key"], c["metric"]): c["status"] for c in cmp["checks"]}
    assert status[("int8/1/cpu", "latency_ms.p50")] == "regression"  # +25%
    assert status[("int8/1/cpu", "end_to_end.fps")] == "regression"  # -33%
    assert status[("int8/2/cpu", "latency_ms.p50")] == "ok"  # +5%
    assert status[("float32/1/cpu", "latency_ms.p50")] == "improvement"  # -25%
    assert status[("float32/1/cpu", "top1")] == "regression"  # -5 points
    assert cmp["regressions"] == 3
    assert cmp["missing"] == ["gone/1/cpu"]
    assert any("cpu" in n for n in cmp["notes"])
    # A wider tolerance accepts the same numbers.
    assert compare(new, old, tolerance=0.40, accuracy_tolerance=0.1)["regressions"] == 0


def test_compare_reads_schema_1_rows():
    old = _results([_row("int8", 1, 1.0, 0.9)])
    del old["rows"][0]["accelerator"]  # schema 1 had no accelerator: CPU
    new = _results([_row("int8", 1, 1.0, 0.9)])
    assert compare(new, old)["checks"][0]["key"] == "int8/1/cpu"


def test_compare_cli_strict_exit_code(tmp_path, capsys):
    old = _write(tmp_path / "old", _results([_row("int8", 1, 1.0, 0.9)]))
    slow = _write(tmp_path / "slow", _results([_row("int8", 1, 1.5, 0.9)]))
    same = _write(tmp_path / "same", _results([_row("int8", 1, 1.02, 0.9)]))
    assert main(["compare", str(slow), str(old)]) == 0  # reported, not failing
    assert "regression: int8/1/cpu latency_ms.p50" in capsys.readouterr().err
    assert main(["compare", str(slow), str(old), "--strict"]) == EXIT_REGRESSION
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: 1 regression(s) beyond tolerance vs {old}"]
    assert main(["compare", str(same), str(old), "--strict"]) == 0
    assert main(["compare", str(slow), str(old), "--strict", "--tolerance", "0.6"]) == 0


def test_bad_reference_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["compare", str(bad), str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not valid JSON" in err[0]
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(EdgekitError, match="not a benchmark results file"):
        load_results(tmp_path / "list.json")


# --- report merge -----------------------------------------------------------------------

def test_report_merges_devices(tmp_path):
    a = _write(tmp_path / "pi/bench", _results(
        [_row("int8", 1, 40.0, 0.9, 600), _row("int8", 4, 15.0, 0.9, 600),
         _row("float32", 4, 30.0, 0.92, 1600)], cpu="Cortex-A72",
        board="Raspberry Pi 4 Model B"))
    _write(tmp_path / "pc", _results([_row("int8", 1, 1.0, 0.9, 600)], cpu="Xeon"))
    _write(tmp_path / "pc2", _results([_row("int8", 1, 1.1, 0.9, 600)], cpu="Xeon"))
    out = tmp_path / "merged"
    assert main(["report", str(tmp_path / "pi"), str(tmp_path / "pc"), str(tmp_path / "pc2"),
                 "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["kind"] == "merged" and len(merged["devices"]) == 3
    devices = [d["device"] for d in merged["devices"]]
    assert devices == ["Raspberry Pi 4 Model B", "Xeon (x86_64, 2 cores)",
                       "Xeon (x86_64, 2 cores) #2"]
    assert len(merged["rows"]) == 5 and all(r["device"] in devices for r in merged["rows"])
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 5 and rows[0]["device"] == "Raspberry Pi 4 Model B"
    report = (out / "report.md").read_text()
    assert "| Raspberry Pi 4 Model B | int8 | 4 |" in report
    assert "cross-device" in report and "not measured here" in report
    assert (out / "latency_vs_accuracy.png").stat().st_size > 1000
    assert (out / "thread_scaling.png").stat().st_size > 1000  # the Pi has 1 and 4 threads
    # A merged folder merges again, keeping its devices' labels.
    assert main(["report", str(out), str(tmp_path / "pc"), "--out", str(tmp_path / "m2")]) == 0
    again = json.loads((tmp_path / "m2/results.json").read_text())
    assert [d["device"] for d in again["devices"]] == devices + ["Xeon (x86_64, 2 cores) #3"]
    assert len(again["rows"]) == 6
    # One folder: the report is redrawn in place from its results.json.
    assert main(["report", str(a.parent)]) == 0
    assert "| int8 | 4 | cpu |" in (a.parent / "report.md").read_text()


def test_report_missing_dir_is_one_clear_error(tmp_path):
    r = run_cli("benchmarks", "report", str(tmp_path / "nope"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]


# --- environment and progress -----------------------------------------------------------

def test_environment_keys():
    env = envmod.environment()
    for key in ("machine", "os", "python", "cpu", "cores", "cores_usable", "governor",
                "governors", "board", "temperature_c", "throttling", "interpreter",
                "packages", "edgetpu", "load_average", "cpu_delegate"):
        assert key in env, key
    assert env["cores"] >= 1 and env["interpreter"].startswith("ai-edge-litert")
    assert set(env["edgetpu"]) >= {"library", "library_found", "usb", "pcie"}
    json.dumps(env)  # serialisable as it is


def test_environment_reads_pi_throttling_and_coral_link(tmp_path, monkeypatch):
    fw = tmp_path / "devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("0x50005\n")  # under-voltage + throttled, now and since
    cpu = tmp_path / "devices/system/cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_governor").write_text("ondemand\n")
    usb = tmp_path / "bus/usb/devices/2-1"
    usb.mkdir(parents=True)
    for name, value in (("idVendor", "18d1"), ("idProduct", "9302"), ("speed", "480")):
        (usb / name).write_text(value + "\n")
    monkeypatch.setattr(envmod, "_SYS", tmp_path)
    t = envmod.throttling()
    assert t["throttled_now"] and t["now"] == ["under-voltage", "throttled"]
    assert t["since_boot"] == ["under-voltage", "throttled"]
    assert envmod.governors() == {"cpu0": "ondemand"}
    assert envmod.coral_usb() == [{"bus": "2-1", "id": "18d1:9302", "speed_mbps": 480,
                                   "usb": "2", "firmware_loaded": True}]
    env = {"governors": ["ondemand"], "throttling": t, "load_average": [0.1],
           "cores": 4, "edgetpu": {"usb": envmod.coral_usb()}}
    warnings = " | ".join(envmod.environment_warnings(env))
    assert "not 'performance'" in warnings and "throttling seen before" in warnings
    assert "USB 2" in warnings
    calm = {"governors": ["performance"], "throttling": None, "load_average": [0.1], "cores": 4}
    assert envmod.environment_warnings(calm) == []


def test_progress_bar_fallback():
    out = io.StringIO()
    assert list(progress(range(7), 7, "imgs", stream=out, use_tqdm=False)) == list(range(7))
    assert out.getvalue().rstrip().endswith("7/7") and "imgs [" in out.getvalue()


def test_benchmarks_never_import_tensorflow_or_matplotlib_at_module_level():
    for path in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: matplotlib is imported lazily
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert n.split(".")[0] not in ("tensorflow", "keras", "matplotlib"), \
                    f"{path.name} imports {n}"
        assert "import tensorflow" not in path.read_text(), path.name


# --- real measurements (the shared `exported` fixture) -----------------------------------

def test_real_measurement(exported, sample):
    from benchmarks.core import benchmark

    report, results = benchmark(exported.parent, threads=[1], runs=5, warmup=1,
                                video=sample / "video.avi", video_frames=8, video_fps=0,
                                show_progress=False)
    saved = json.loads((report.parent / "results.json").read_text())
    converted = json.loads((exported / "convert_report.json").read_text())["variants"]
    assert saved["schema_version"] == 2 and saved["rows"] == results["rows"]
    assert {r["variant"] for r in saved["rows"]} == {"float32", "int8"}
    for r in saved["rows"]:
        assert r["threads"] == 1 and r["accelerator"] == "cpu" and r["runs"] >= 5
        assert 0 < r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["load_ms"] > 0 and r["first_ms"] > 0 and r["throughput_fps"] > 0
        assert r["rss_scope"] == "process per row"
        assert r["rss_peak_bytes"] >= r["rss_baseline_bytes"] > 10 * 2**20
        assert r["size_bytes"] == (exported / r["model_file"]).stat().st_size
        # The same model on the same held-out images scores what the conversion measured.
        assert r["top1"] == pytest.approx(converted[r["variant"]]["top1"], abs=1e-9)
        assert r["images"] == saved["test_images"] > 0
        e = r["end_to_end"]
        # Unpaced (video_fps=0), every frame is classified in order: none dropped; the
        # capture thread may have read a few frames ahead when the daemon stopped at 8.
        assert e["frames_processed"] == 8 and e["frames_dropped"] == 0
        assert e["frames_captured"] >= 8
        # The row's model proved itself on this machine (golden cases stored by convert).
        assert r["selftest"] == "pass" and r["selftest_problems"] == []
        assert e["latency_ms"]["p50"] >= e["frame_age_ms"]["p50"] >= 0
    assert saved["environment"]["cores"] >= 1 and "end" in saved
    assert (report.parent / "results.csv").read_text().count("\n") == 3
    assert "| int8 | 1 | cpu |" in report.read_text()
    assert (report.parent / "latency_vs_accuracy.png").stat().st_size > 1000


def test_measuring_needs_neither_tensorflow_nor_matplotlib(exported, tmp_path):
    # A copy of the run, so that no other test's bench/ folder is read or changed, with a
    # plot left over from an earlier benchmark that matplotlib could draw.
    run = tmp_path / "run"
    shutil.copytree(exported.parent, run, ignore=shutil.ignore_patterns("bench", "logs",
                                                                        "checkpoints"))
    bench = run / "bench"
    bench.mkdir()
    (bench / "latency_vs_accuracy.png").write_bytes(b"stale plot")
    script = (
        "import sys\n"
        "for m in ('tensorflow', 'keras', 'matplotlib'):\n"
        "    sys.modules[m] = None\n"
        "from benchmarks.core import benchmark\n"
        "report, res = benchmark(sys.argv[1], variants=['int8'], threads=[1], runs=3, warmup=0, "
        "isolate=False, show_progress=False)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'matplotlib') "
        "and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
        "print('ok', report)\n")
    r = subprocess.run([sys.executable, "-c", script, str(run)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "No plot: matplotlib is not installed" in (bench / "report.md").read_text()
    assert not (bench / "latency_vs_accuracy.png").exists()  # stale plot removed
    res = json.loads((bench / "results.json").read_text())
    assert res["rows"][0]["rss_scope"].startswith("shared process")


def test_measure_cli_errors_before_measuring(exported, tmp_path):
    bad = tmp_path / "ref.json"
    bad.write_text("not json")
    for args, fragment in (((str(exported.parent), "--compare", str(bad)), "not valid JSON"),
                           ((str(tmp_path / "nope"),), "run folder not found"),
                           ((str(exported.parent), "--video", str(tmp_path / "v.avi")),
                            "video source not found"),
                           (("validate", str(tmp_path / "m.tflite")), "model not found")):
        r = run_cli("benchmarks", *args)
        lines = error_lines(r.stderr)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], \
            r.stderr


def test_validate_against_litert_tool(exported):
    from benchmarks.validate import format_result, validate

    r = validate(exported / "model_int8.tflite", threads=1, runs=20, warmup=2, rounds=1)
    assert r["harness_p50_ms"] > 0 and r["tool_median_ms"] > 0
    assert len(r["harness_rounds_ms"]) == len(r["tool_rounds_ms"]) == 1
    assert 0.2 < r["ratio"] < 5  # sanity only: a loaded 2-core machine is noisy
    assert "ratio" in format_result(r)


def test_validate_alternates_and_compares_medians(tmp_path, monkeypatch):
    import benchmarks.validate as val

    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    calls, asked = [], set()
    harness = iter([2.0, 3.0, 2.5, 2.0, 3.0, 2.5])
    tool = iter([1.0, 2.0, 4.0, 1.0, 2.0, 4.0])

    def fake_row(spec):
        calls.append("harness")
        asked.add(("harness", spec["model"], spec["threads"], spec["runs"], spec["warmup"]))
        assert spec["image"] is None  # the tool feeds random input too: no JPEG decode
        return {"latency_ms": {"p50": next(harness)}}

    def fake_tool(path, threads, runs, warmup):
        calls.append("tool")
        asked.add(("tool", str(path), threads, runs, warmup))
        return {"latency": {"median_ms": next(tool)}}

    monkeypatch.setattr(val, "is_edgetpu_model", lambda p: False)
    monkeypatch.setattr(val, "tool_available", lambda: True)
    monkeypatch.setattr(val, "measure_row", fake_row)
    monkeypatch.setattr(val, "run_tool", fake_tool)
    r = val.validate(model, threads=2, runs=3, warmup=1, rounds=3, tolerance=0.2)
    # Alternating order, so that drift in machine load hits both sides alike.
    assert calls == ["harness", "tool", "tool", "harness", "harness", "tool"]
    # Both sides time the same model with the same settings, or the ratio means nothing.
    assert asked == {("harness", str(model), 2, 3, 1), ("tool", str(model), 2, 3, 1)}
    assert (r["harness_p50_ms"], r["tool_median_ms"]) == (2.5, 2.0)  # medians of rounds
    assert (r["harness_rounds_ms"], r["tool_rounds_ms"]) == ([2.0, 3.0, 2.5], [1.0, 2.0, 4.0])
    assert r["ratio"] == 1.25 and r["within_tolerance"] is False
    r = val.validate(model, threads=2, runs=3, warmup=1, rounds=3, tolerance=0.25)
    assert r["within_tolerance"] is True  # the band's edge is inside it
