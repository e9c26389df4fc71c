"""Fleet monitoring from an Ansible inventory: Prometheus scrape targets, alert rules and a
Grafana dashboard (``python -m deploy monitor``).

The inventory is read by Ansible itself (``ansible-inventory --list``, the parser the deploy
uses, so INI, YAML, group and host variables and ``group_vars/`` all mean what they mean to
``make deploy``). Per host, these inventory variables are honoured:

* ``edgekit_profile``: the device profile (YAML); its ``http.port`` is the metrics port and
  its ``name`` the ``profile`` label (default: ``--config``).
* ``edgekit_metrics_port``: the port to scrape when it is not the profile's.
* ``edgekit_metrics_host``: the address to scrape (default ``ansible_host``, else the name).
* ``edgekit_model_sha256``, or ``edgekit_model`` (a local model file, hashed): the
  ``model_sha256`` label (default: ``--model``).
* ``edgekit_http_token``: the daemon's bearer token (default: ``--token-file``, then
  ``EDGEKIT_HTTP_TOKEN``, then the profile's ``http.token``).

Tokens go to ``secrets/*.token`` (mode 0600) that the configuration names with
``authorization.credentials_file``; they are never written into ``prometheus.yml``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import atomic_path, write_text

from .monitor_rules import JOB, alert_rules, dashboard

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Host:
    """One daemon to scrape, as the inventory and its profile describe it."""

    name: str
    address: str
    port: int
    groups: tuple[str, ...] = ()
    profile: str = ""
    model_sha256: str = ""
    token: str | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()  # warnings for the summary line (not fatal)

    @property
    def target(self) -> str:
        """``address:port`` (IPv6 in brackets)."""
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{addr}:{self.port}"


@dataclass(frozen=True)
class Problem:
    """A host left out of the configuration, and why (one line)."""

    name: str
    reason: str


def ansible_inventory() -> str:
    """The ansible-inventory beside this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / "ansible-inventory"
    found = str(here) if here.is_file() else shutil.which("ansible-inventory")
    if not found:
        raise EdgekitError("ansible-inventory not found: pip install -e '.[deploy]' "
                           "(or make monitor, which installs it)")
    return found


def read_inventory(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """(hostvars per host, groups per host, parents included) of an Ansible inventory.

    Raises:
        EdgekitError: the file is missing or Ansible cannot parse it.
    """
    if not path.is_file():
        raise EdgekitError(f"inventory not found: {path}")
    env = {**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_LOCALHOST_WARNING": "False"}
    try:
        p = subprocess.run([ansible_inventory(), "-i", str(path), "--list"], env=env,
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"ansible-inventory took over 120 s on {path}") from None
    if p.returncode != 0:
        lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Failed to parse" in ln and "caused" not in ln),
                   lines[-1] if lines else f"status {p.returncode}")
        raise EdgekitError(f"inventory does not parse: {why[:200]} [{path}]")
    doc = json.loads(p.stdout)
    hostvars = doc.get("_meta", {}).get("hostvars", {})
    parents: dict[str, set[str]] = {}
    direct: dict[str, set[str]] = {}
    for group, body in doc.items():
        if group == "_meta" or not isinstance(body, dict):
            continue
        for child in body.get("children", []):
            parents.setdefault(child, set()).add(group)
        for host in body.get("hosts", []):
            direct.setdefault(host, set()).add(group)
            hostvars.setdefault(host, {})

    def ancestors(group: str, seen: set[str]) -> set[str]:
        for parent in parents.get(group, ()):
            if parent not in seen:
                seen.add(parent)
                ancestors(parent, seen)
        return seen

    groups = {}
    for host in hostvars:
        found = set(direct.get(host, ()))
        for g in list(found):
            ancestors(g, found)
        groups[host] = sorted(found - {"all", "ungrouped"})
    return hostvars, groups


def _resolve(path: str, base: Path) -> Path:
    """A path from an inventory variable: as given (working directory), else beside the
    inventory."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return base / p if (base / p).exists() else p


def _model_sha(value: str, base: Path, what: str) -> str:
    from edge_runtime.selftest import file_sha256

    path = _resolve(value, base)
    if not path.is_file():
        raise EdgekitError(f"{what} {value}: model file not found")
    return file_sha256(path)


@dataclass(frozen=True)
class Defaults:
    """What applies to hosts whose inventory variables do not say otherwise."""

    config: Path | None = None
    model: Path | None = None
    token: str | None = field(default=None, repr=False)
    port: int | None = None


def describe_host(name: str, hv: dict[str, Any], groups: list[str], base: Path,
                  defaults: Defaults) -> Host:
    """The :class:`Host` one inventory entry describes.

    Raises:
        EdgekitError: its profile or model cannot be read, or its port is not a port.
    """
    from edge_runtime.config import load_config

    notes = []
    profile_path = hv.get("edgekit_profile") or defaults.config
    cfg = None
    if profile_path:
        path = _resolve(str(profile_path), base)
        cfg = load_config(path, environ={})  # raises naming the file and field
        if not cfg.http.enabled and "edgekit_metrics_port" not in hv:
            notes.append(f"http is off in {path.name}: nothing serves /metrics")
    port = hv.get("edgekit_metrics_port") or defaults.port or (cfg.http.port if cfg else 8080)
    try:
        port = int(port)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        raise EdgekitError(f"edgekit_metrics_port {hv.get('edgekit_metrics_port')!r}, "
                           "expected a port 1..65535")
    address = str(hv.get("edgekit_metrics_host") or hv.get("ansible_host") or name)
    if cfg is not None and cfg.http.host in LOOPBACK and address not in LOOPBACK:
        notes.append(f"the profile binds {cfg.http.host}: set http.host 0.0.0.0 (and a "
                     "token) for Prometheus to reach it")
    if hv.get("edgekit_model_sha256"):
        sha = str(hv["edgekit_model_sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise EdgekitError(f"edgekit_model_sha256 {sha[:80]!r}, expected 64 hex digits")
    elif hv.get("edgekit_model"):
        sha = _model_sha(str(hv["edgekit_model"]), base, "edgekit_model")
    elif defaults.model is not None:
        sha = _model_sha(str(defaults.model), base, "--model")
    else:
        sha = ""
    token = hv.get("edgekit_http_token") or defaults.token or (cfg.http.token if cfg else None)
    if isinstance(token, dict):  # ansible-inventory shows a vaulted value, not its plaintext
        raise EdgekitError("edgekit_http_token is vault-encrypted: give the token with "
                           "--token-file (or EDGEKIT_HTTP_TOKEN) instead")
    return Host(name, address, port, tuple(groups), cfg.name if cfg else "", sha,
                str(token) if token else None, tuple(notes))


def fleet(inventory: Path, defaults: Defaults) -> tuple[list[Host], list[Problem]]:
    """Every host of the inventory, and those that could not be described (one line each)."""
    hostvars, groups = read_inventory(inventory)
    hosts, problems = [], []
    for name in sorted(hostvars):
        try:
            hosts.append(describe_host(name, hostvars[name], groups.get(name, []),
                                       inventory.parent, defaults))
        except (EdgekitError, OSError, ValueError) as e:
            problems.append(Problem(name, str(e).splitlines()[0][:300]))
    return hosts, problems


def _labels(h: Host) -> dict[str, str]:
    labels = {"instance": h.name, "host": h.name,
              # Lists in one label, comma-delimited at both ends as Prometheus' own service
              # discoveries write them, so `groups=~".*,pis,.*"` matches one group exactly.
              "groups": "," + ",".join(h.groups) + "," if h.groups else ""}
    if h.profile:
        labels["profile"] = h.profile
    if h.model_sha256:
        labels["model_sha256"] = h.model_sha256
    return labels


def scrape_jobs(hosts: list[Host]) -> list[tuple[str, str | None, list[Host]]]:
    """(job name, token, hosts) per distinct token: Prometheus sets credentials per scrape
    configuration, not per target. Every job's series get ``job="edgekit"``."""
    by_token: dict[str | None, list[Host]] = {}
    for h in hosts:
        by_token.setdefault(h.token, []).append(h)
    jobs = []
    for i, (token, members) in enumerate(sorted(by_token.items(), key=lambda kv: kv[1][0].name)):
        jobs.append((JOB if i == 0 else f"{JOB}-{i + 1}", token, members))
    return jobs


def prometheus_config(jobs: list[tuple[str, str | None, list[Host]]], source: str,
                      scrape_interval: str, rules_file: str) -> str:
    """prometheus.yml: paths relative to it (Prometheus resolves them from its folder)."""
    import yaml

    configs = []
    for job, token, _ in jobs:
        c: dict[str, Any] = {"job_name": job, "metrics_path": "/metrics",
                             "file_sd_configs": [{"files": [f"targets/{job}.json"],
                                                  "refresh_interval": "1m"}]}
        if token is not None:
            c["authorization"] = {"type": "Bearer", "credentials_file": f"secrets/{job}.token"}
        if job != JOB:
            c["relabel_configs"] = [{"target_label": "job", "replacement": JOB}]
        configs.append(c)
    doc = {"global": {"scrape_interval": scrape_interval,
                      "evaluation_interval": scrape_interval},
           "rule_files": [rules_file], "scrape_configs": configs}
    return (f"# Generated by `python -m deploy monitor` from {source}: regenerate, do not "
            "edit.\n# Tokens are in secrets/ (mode 0600; the prometheus user must read them)."
            "\n" + yaml.safe_dump(doc, sort_keys=False))


def _write_secret(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)  # before the token is in it
        tmp.write_text(token + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Generated:
    """What :func:`generate` wrote and found."""

    files: list[Path]
    hosts: list[Host]
    problems: list[Problem]


def generate(inventory: Path, out: Path, defaults: Defaults, scrape_interval: str = "15s",
             stale_after_s: int = 60, max_temp_c: float = 80.0) -> Generated:
    """Writes prometheus.yml, targets/, secrets/, rules/ and grafana/ into ``out``.

    Raises:
        EdgekitError: the inventory is missing, does not parse, or names no usable host.
    """
    import yaml

    hosts, problems = fleet(inventory, defaults)
    if not hosts:
        raise EdgekitError(f"no host to monitor in {inventory}"
                           + (f" ({problems[0].name}: {problems[0].reason})" if problems else ""))
    jobs = scrape_jobs(hosts)
    rules = "rules/edgekit.rules.yml"
    files = []
    for job, token, members in jobs:
        sd = [{"targets": [h.target], "labels": _labels(h)} for h in members]
        write_text(out / f"targets/{job}.json", json.dumps(sd, indent=1) + "\n")
        files.append(out / f"targets/{job}.json")
        if token is not None:
            _write_secret(out / f"secrets/{job}.token", token)
            files.append(out / f"secrets/{job}.token")
    for stale in sorted([*(out / "targets").glob(f"{JOB}*.json"),
                         *(out / "secrets").glob(f"{JOB}*.token")]):
        if stale not in files:  # a job of an earlier run whose token is gone
            stale.unlink()
    write_text(out / rules, "# Generated by `python -m deploy monitor`: regenerate, do not "
               "edit.\n" + yaml.safe_dump(alert_rules(stale_after_s, max_temp_c),
                                          sort_keys=False, width=200))
    write_text(out / "grafana/edgekit-fleet.json", json.dumps(dashboard(), indent=1) + "\n")
    write_text(out / "prometheus.yml",
               prometheus_config(jobs, inventory.name, scrape_interval, rules))
    files += [out / rules, out / "grafana/edgekit-fleet.json", out / "prometheus.yml"]
    return Generated(files, hosts, problems)


def probe(h: Host, timeout_s: float = 5.0) -> str:
    """What a scrape of ``h`` would find now: "ok" or one line saying why not."""
    req = urllib.request.Request(f"http://{h.target}/metrics")
    if h.token:
        req.add_header("Authorization", f"Bearer {h.token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body = r.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return ("401: the daemon wants a token" if not h.token
                    else "401: the daemon refuses this token")
        return f"HTTP {e.code} from /metrics"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"unreachable: {reason}"[:200]
    if "edgekit_frames_total" not in body:
        return "answers, but not with edgekit metrics"
    return "ok"


def probe_all(hosts: list[Host], timeout_s: float = 5.0) -> dict[str, str]:
    """:func:`probe` for every host, in parallel (bounded time whatever the fleet size)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip((h.name for h in hosts), pool.map(lambda h: probe(h, timeout_s),
                                                          hosts)))


def summary(gen: Generated, checks: dict[str, str] | None = None) -> str:
    """One line per host: host, target, profile, model, and the check or the problem."""
    rows = [("host", "target", "profile", "model", "status")]
    for h in gen.hosts:
        status = (checks or {}).get(h.name, "configured")
        if h.notes:
            status += "; " + "; ".join(h.notes)
        rows.append((h.name, h.target, h.profile or "-", h.model_sha256[:12] or "-", status))
    for p in gen.problems:
        rows.append((p.name, "-", "-", "-", "left out: " + p.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                     for r in rows)


def add_parser(sub: Any) -> None:
    """The ``monitor`` subcommand of ``python -m deploy``."""
    import argparse
    import re

    from edge_runtime.errors import PORT, int_at_least

    def duration(text: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*(ms|s|m|h)", text):
            raise argparse.ArgumentTypeError(f"expected a Prometheus duration like 15s or 1m, "
                                             f"got {text[:40]!r}")
        return text

    m = sub.add_parser("monitor", help="Prometheus scrape config, alert rules and a Grafana "
                       "dashboard for the inventory's devices")
    m.add_argument("--inventory", type=Path, required=True, help="Ansible inventory (INI/YAML)")
    m.add_argument("--out", type=Path, required=True, help="folder to write (e.g. monitoring/)")
    m.add_argument("--config", type=Path, default=None,
                   help="device profile for hosts without edgekit_profile (its http.port)")
    m.add_argument("--model", type=Path, default=None,
                   help="deployed model, for hosts without edgekit_model(_sha256)")
    m.add_argument("--token-file", type=Path, default=None, help="file holding the daemons' "
                   "http.token (default: $EDGEKIT_HTTP_TOKEN, then the profile's)")
    m.add_argument("--metrics-port", type=PORT, default=None,
                   help="port for hosts without edgekit_metrics_port (default: the profile's)")
    m.add_argument("--scrape-interval", type=duration, default="15s", help="Prometheus' "
                   "scrape and rule evaluation interval")
    m.add_argument("--stale-after", type=int_at_least(1), default=60,
                   help="seconds without a classified frame before EdgekitNoFreshFrames")
    m.add_argument("--max-temp", type=float, default=80.0,
                   help="temperature (C) for EdgekitThermalThrottling")
    m.add_argument("--check", action="store_true",
                   help="also fetch each host's /metrics now, with its token (5 s per host)")
    m.set_defaults(func=_cmd_monitor)


def _cmd_monitor(args: Any) -> int:
    from edge_runtime.errors import EXIT_ERROR, EXIT_OK

    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise EdgekitError(f"cannot read --token-file {args.token_file}: "
                               f"{e.strerror or e}") from None
        if not token:
            raise EdgekitError(f"--token-file {args.token_file} is empty")
    token = token or os.environ.get("EDGEKIT_HTTP_TOKEN") or None
    defaults = Defaults(args.config, args.model, token, args.metrics_port)
    if args.config is not None and not args.config.is_file():
        raise EdgekitError(f"profile not found: {args.config}")
    gen = generate(args.inventory, args.out, defaults, args.scrape_interval,
                   args.stale_after, args.max_temp)
    checks = probe_all(gen.hosts) if args.check else None
    print(summary(gen, checks))
    print(f"wrote {args.out / 'prometheus.yml'} ({len(gen.hosts)} targets), "
          f"{args.out / 'rules/edgekit.rules.yml'}, {args.out / 'grafana/edgekit-fleet.json'}"
          "\nrun: prometheus --config.file=" + str(args.out / "prometheus.yml"), file=sys.stderr)
    failed = gen.problems or (checks and any(v != "ok" for v in checks.values()))
    return EXIT_ERROR if failed else EXIT_OK
