"""Published MobileNetV2 figures, for scale only: measured by others, on their models,
never here. Each entry names its source; none is edgekit's measurement.

Only figures that could be checked against a public source are listed; add a row only
with its source.
"""

from __future__ import annotations

from typing import Any

PUBLISHED: list[dict[str, Any]] = [
    {
        "model": "MobileNet v2 1.0 (224x224), float32",
        "hardware": "Raspberry Pi 4 (BCM2711), CPU, multi-threaded, XNNPACK",
        "latency_ms": 44.0,
        "conditions": "XNNPACK end2end-bench, randomized weights and inputs, benchmarked "
                      "2020-02-12 on Raspbian Buster",
        "source": "XNNPACK README, Performance / Raspberry Pi",
        "url": "https://github.com/google/XNNPACK/blob/master/README.md",
    },
    {
        "model": "MobileNet v2 (224x224), int8, Edge TPU-compiled",
        "hardware": "Coral USB Accelerator (USB 3.0) on a desktop CPU host",
        "latency_ms": 2.6,
        "conditions": "C++ benchmark, model execution only (no preprocessing), ImageNet "
                      "1000 classes",
        "source": "Coral, Edge TPU performance benchmarks, Table 1",
        "url": "https://coral.ai/docs/edgetpu/benchmarks/",
    },
    {
        "model": "MobileNet v2 (224x224), int8, Edge TPU-compiled",
        "hardware": "Coral Dev Board (Edge TPU)",
        "latency_ms": 2.6,
        "conditions": "as above",
        "source": "Coral, Edge TPU performance benchmarks, Table 1",
        "url": "https://coral.ai/docs/edgetpu/benchmarks/",
    },
]


def published_markdown() -> list[str]:
    """The report section: a table clearly marked as figures published elsewhere."""
    lines = ["## Published figures for comparison (not measured here)", "",
             "Published elsewhere, on full-size 224x224 ImageNet MobileNetV2 models and other "
             "software; shown only for scale. They are not edgekit measurements and are not "
             "comparable one-to-one with the rows above.", "",
             "| model | hardware | latency (ms) | conditions | source |",
             "|---|---|---:|---|---|"]
    for p in PUBLISHED:
        lines.append(f"| {p['model']} | {p['hardware']} | {p['latency_ms']:g} | "
                     f"{p['conditions']} | [{p['source']}]({p['url']}) |")
    return lines
