"""Proxy benchmark: the Lightmesh proxy against nginx and HAProxy, in one interleaved run on 127.0.0.1.

Targets (all started at once, measured round-robin so host noise hits every one alike):

``direct``       wrk → backend (the ceiling of the load side)
``nginx``        nginx reverse proxy, 1 process, upstream keep-alive
``haproxy``      HAProxy ``mode http``, 1 thread, ``http-reuse always``
``lightmesh``    ``python -m lightmesh proxy --workers 1`` with the mesh chain on the route
                 (allow-list 127.0.0.0/8, rate limit set very high, retry 1, metrics always on)
``floor``        ``bench/floor_relay.py`` (small scenarios only): a 1:1 uvloop relay that parses
                 with httptools and rebuilds the request head, nothing else; context: what the
                 runtime alone costs, so ``lightmesh`` minus ``floor`` is Lightmesh's own work
``haproxy-tcp``  HAProxy ``mode tcp`` (TCP relay test; the goal's reference)
``haproxy-tcp-splice`` the same with ``option splice-auto`` (context: kernel splicing, as Lightmesh)
``lightmesh-tcp`` the same Lightmesh proxy's TCP route (TCP relay test)

Scenarios: ``small`` (100 B keep-alive responses, ``wrk -t1 -c50``: req/s, p50, p99; wrk repeats one
request), ``small-varied`` (the same with a unique ``X-Request-Id`` per request, as traced traffic
differs per request: the representative small-request figure), ``big`` (1 MiB
responses, ``wrk -t1 -c10``: MiB/s), ``tcp`` (the 1 MiB stream through the L4 relays: MiB/s).
The backend is nginx with ``master_process off``; the proxies are pinned to CPU1 and the backend and
wrk to CPU0 (``taskset``), as in /work/shared/reference/python-proxy-performance.md. Proxy CPU is
read from ``/proc`` (utime+stime of the target's whole session); CPU used by processes that are not
ours ("foreign", other people's work on this shared host) is measured for every run, a quiet second is
awaited before each run and a noisy run is repeated (bounded).

Results: ``bench/results/proxy.json`` (every run, medians, ratios, goals) and ``bench/results/proxy.md``;
a quick run (``--quick`` or ``BENCH_QUICK=1``) writes ``proxy-quick.*`` so it never replaces the
real figures. ``--self-check`` exercises the harness's pure parts without starting anything.

Usage: ``make bench BENCH=proxy`` or ``.venv/bin/python bench/bench_proxy.py [--quick] [--rounds N]
[--duration S] [--targets a,b] [--strict]``. Environment: ``BENCH_QUICK``, ``BENCH_ROUNDS``,
``BENCH_DURATION``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
for _p in (str(REPO / "proxy_image"), str(REPO)):
    if _p not in sys.path:  # also runnable as a plain script
        sys.path.insert(0, _p)

SMALL_BODY = b"x" * 100
BIG_SIZE = 1 << 20
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_TOP_PAD_": "67108864"}
LOAD_CPU, PROXY_CPU = "0", "1"
FOREIGN_LIMIT = 0.15  # cores used by others during a run before it is repeated
MAX_REPEATS = 2  # per run, on noise
QUIET_TRIES = 5  # quiet-second probes before a run

SCENARIOS = {
    # name: (path, wrk connections, targets, what is compared)
    "small": ("/", 50, ("direct", "nginx", "haproxy", "lightmesh", "floor")),
    # every request differs (a unique X-Request-Id, as traced mesh traffic carries a unique traceparent):
    # no per-connection memo of identical requests helps here
    "small-varied": ("/", 50, ("direct", "nginx", "haproxy", "lightmesh", "floor")),
    "big": ("/big", 10, ("direct", "nginx", "haproxy", "lightmesh")),
    "tcp": ("/big", 10, ("haproxy-tcp", "haproxy-tcp-splice", "lightmesh-tcp")),
}

# wrk Lua script per scenario (written to a temporary file at run time)
SCRIPTS = {
    "small-varied": """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["X-Request-Id"] = tostring(n)})
end
""",
}

GOALS = (
    # (description, scenario, metric, numerator, denominator, minimum ratio)
    ("small-request req/s ≥ 1.0× HAProxy", "small", "rps", "lightmesh", "haproxy", 1.0),
    ("small-request req/s ≥ 0.9× nginx", "small", "rps", "lightmesh", "nginx", 0.9),
    ("small-request req/s, every request different, ≥ 1.0× HAProxy", "small-varied", "rps", "lightmesh", "haproxy", 1.0),
    ("small-request req/s, every request different, ≥ 0.9× nginx", "small-varied", "rps", "lightmesh", "nginx", 0.9),
    ("1 MiB throughput ≥ 1.0× nginx", "big", "mib_s", "lightmesh", "nginx", 1.0),
    ("TCP relay throughput ≥ 1.0× HAProxy mode tcp", "tcp", "mib_s", "lightmesh-tcp", "haproxy-tcp", 1.0),
)


# --------------------------------------------------------------------------- wrk output


_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_B = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}  # wrk's units are binary


def parse_wrk(text: str) -> dict:
    """req/s, MiB/s, latency percentiles (ms), request count, errors, from ``wrk --latency`` output."""
    out: dict = {}
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if not m:
        raise ValueError(f"wrk output has no Requests/sec line: {text[-300:]!r}")
    out["rps"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s*([\d.]+)([KMGT]?B)", text)
    out["mib_s"] = float(m.group(1)) * _UNITS_B[m.group(2)] / (1 << 20) if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        if m:
            out[f"p{pct}_ms"] = float(m.group(1)) * _UNITS_S[m.group(2)] * 1000
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if m:
        out["requests"] = int(m.group(1))
        out["seconds"] = float(m.group(2)) * _UNITS_S[m.group(3)]
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return out


# --------------------------------------------------------------------------- CPU accounting


TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def session_cpu(sids: set[int]) -> dict[int, float]:
    """utime+stime (s) of every live process, summed per session id in ``sids``."""
    totals = {sid: 0.0 for sid in sids}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        rest = stat[stat.rfind(")") + 2:].split()
        sid = int(rest[3])
        if sid in totals:
            totals[sid] += (int(rest[11]) + int(rest[12])) / TICK
    return totals


# --------------------------------------------------------------------------- processes


class Target:
    """One process to measure (a plain class: bench/run.py loads this file without registering it
    in sys.modules, which dataclasses need)."""

    def __init__(self, name: str, port: int, argv: list[str], cpu: str, env: dict[str, str] | None = None,
                 proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.argv = argv
        self.cpu = cpu  # taskset CPU list, "" = unpinned
        self.env = env or {}
        self.proc = proc
        self.log = log
        self.error = ""

    @property
    def sid(self) -> int:
        return self.proc.pid if self.proc else -1


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu else argv


def start(target: Target, workdir: Path) -> None:
    target.log = workdir / f"{target.name}.log"
    env = dict(os.environ)
    env.update(target.env)
    with open(target.log, "wb") as log:
        # Own session: the whole tree (supervisor + workers) is measured and killed as one.
        target.proc = subprocess.Popen(pinned(target.cpu, target.argv), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def stop_all(targets: list[Target]) -> None:
    live = [t for t in targets if t.proc and t.proc.poll() is None]
    for t in live:
        try:
            os.killpg(t.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for t in live:
        try:
            t.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for t in targets:
        if t.proc is None:
            continue
        try:
            os.killpg(t.proc.pid, signal.SIGKILL)  # stragglers in the session (workers)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            t.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def wait_ready(target: Target, path: str, deadline_s: float) -> None:
    """Until ``GET path`` through the target answers 200, bounded; records the reason on failure."""
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            target.error = f"exited with {target.proc.returncode}: {tail(target.log)}"
            return
        try:
            status, _ = http_get(target.port, path, timeout=1.0)
            if status == 200:
                return
            last = f"status {status}"
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    target.error = f"not ready after {deadline_s:.0f} s ({last}); log: {tail(target.log)}"


def tail(path: Path | None, n: int = 600) -> str:
    if not path or not path.exists():
        return ""
    return path.read_bytes()[-n:].decode(errors="replace").strip()


def verify(target: Target, big_md5: str) -> None:
    """Correctness before speed: the 100 B body and the 1 MiB body arrive intact."""
    try:
        status, body = http_get(target.port, "/", timeout=5)
        if status != 200 or body != SMALL_BODY:
            target.error = f"GET / returned {status} with {len(body)} bytes"
            return
        status, body = http_get(target.port, "/big", timeout=10)
        if status != 200 or hashlib.md5(body).hexdigest() != big_md5:
            target.error = f"GET /big returned {status} with {len(body)} bytes (md5 mismatch)"
    except Exception as exc:  # noqa: BLE001
        target.error = f"verification failed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- configs


def backend_conf(d: Path, port: int, http2: bool = False) -> str:
    """The backend nginx; ``http2``: HTTP/2 cleartext only (prior knowledge), for bench_h2c."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/backend.pid;
error_log {d}/backend-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    default_type application/octet-stream;
{_temp_paths(d / "backend-tmp")}
    server {{
        listen 127.0.0.1:{port} backlog=4096{" http2" if http2 else ""};
        location = / {{ default_type text/plain; return 200 "{SMALL_BODY.decode()}"; }}
        location = /big {{ root {d}/www; }}
    }}
}}
"""


def nginx_proxy_conf(d: Path, port: int, backend: int) -> str:
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{_temp_paths(d / "nginx-proxy-tmp")}
    upstream be {{ server 127.0.0.1:{backend}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffers 16 64k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def _temp_paths(d: Path) -> str:
    return "\n".join(f"    {kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def haproxy_conf(port: int, backend: int, mode: str, splice: bool = False) -> str:
    http = "    option forwardfor\n    http-reuse always\n" if mode == "http" else ""
    if splice:
        http += "    option splice-auto\n"  # kernel splicing, as Lightmesh's TCP relay does
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode {mode}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{http}
frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server s1 127.0.0.1:{backend}
"""


def lightmesh_config(http_port: int, tcp_port: int, backend: int):
    """The mesh chain on the benchmark route: allow-list, rate limit set very high, retry."""
    from lightmesh import config as c

    http = c.HTTPConfig(
        entry_points=[c.EntryPoint(name="bench", address="127.0.0.1", port=http_port)],
        routers=[c.Router(name="bench", entry_points=["bench"], service="backend",
                          middlewares=["acl", "ratelimit", "retry"])],
        services=[c.HTTPService(name="backend", servers=[c.HTTPServer(url=f"http://127.0.0.1:{backend}")])],
        middlewares=[
            c.AllowListMiddleware(name="acl", source_ranges=["127.0.0.0/8"]),
            c.RateLimitMiddleware(name="ratelimit", average=1_000_000_000, burst=1_000_000_000),
            c.RetryMiddleware(name="retry", attempts=1),
        ],
    )
    tcp = [c.TCPRoute(name="bench-tcp", address="127.0.0.1", port=tcp_port,
                      servers=[c.L4Server(address="127.0.0.1", port=backend)])]
    return c.make_config(1, http=http, tcp=tcp)


def lightmesh_env() -> dict[str, str]:
    paths = [str(REPO / "proxy_image"), str(REPO)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(paths), **MALLOC_ENV}


def lightmesh_available() -> str:
    """"" when ``python -m lightmesh proxy --help`` works, else why not."""
    try:
        r = subprocess.run([sys.executable, "-m", "lightmesh", "proxy", "--help"], capture_output=True,
                           timeout=30, env={**os.environ, **lightmesh_env()})
    except subprocess.TimeoutExpired:
        return "`lightmesh proxy --help` did not finish in 30 s"
    if r.returncode != 0:
        return f"`lightmesh proxy --help` failed: {(r.stderr or r.stdout).decode(errors='replace')[-400:].strip()}"
    return ""


# --------------------------------------------------------------------------- measuring


def quiet_second(our_sids: set[int], window: float) -> float:
    """Foreign CPU (cores) over ``window`` seconds with no load of ours running."""
    b0, o0 = busy_seconds(), sum(session_cpu(our_sids).values())
    time.sleep(window)
    b1, o1 = busy_seconds(), sum(session_cpu(our_sids).values())
    return max(0.0, (b1 - b0) - (o1 - o0)) / window


def run_wrk(port: int, path: str, connections: int, duration: float, targets: list[Target],
            target: Target, backend: Target, script: str | None = None) -> dict:
    sids = {t.sid for t in targets if t.proc}
    url = f"http://127.0.0.1:{port}{path}"
    extra: list[str] = []
    if script:
        script_path = Path(tempfile.gettempdir()) / f"lightmesh-bench-{hashlib.sha1(script.encode()).hexdigest()[:8]}.lua"
        script_path.write_text(script)
        extra = ["-s", str(script_path)]
    argv = pinned(LOAD_CPU if target.cpu else "", ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
                                                    *extra, url])
    before = session_cpu(sids)
    b0 = busy_seconds()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, timeout=duration + 30)
    elapsed = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    b1 = busy_seconds()
    after = session_cpu(sids)
    text = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.decode(errors='replace')[-300:]}")
    result = parse_wrk(text)
    wrk_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    harness = (s1.ru_utime - s0.ru_utime) + (s1.ru_stime - s0.ru_stime)
    ours = sum(after[s] - before[s] for s in sids) + wrk_cpu + harness
    run_seconds = result.get("seconds") or elapsed
    proxy_cpu = 0.0 if target is backend else (after[target.sid] - before[target.sid]) / run_seconds
    result.update({
        "proxy_cpu": proxy_cpu,
        "backend_cpu": (after[backend.sid] - before[backend.sid]) / run_seconds,
        "wrk_cpu": wrk_cpu / run_seconds,
        "foreign_cpu": max(0.0, (b1 - b0) - ours) / elapsed,
    })
    return result


def measure(scenario: str, target: Target, targets: list[Target], backend: Target, duration: float,
            quiet_window: float, log) -> dict:
    path, connections, _ = SCENARIOS[scenario]
    sids = {t.sid for t in targets if t.proc}
    attempts = []
    for attempt in range(1 + MAX_REPEATS):
        foreign_before = 0.0
        for _ in range(QUIET_TRIES):  # wait (bounded) for a quiet moment
            foreign_before = quiet_second(sids, quiet_window)
            if foreign_before <= FOREIGN_LIMIT:
                break
        result = run_wrk(target.port, path, connections, duration, targets, target, backend, SCRIPTS.get(scenario))
        result["foreign_before"] = foreign_before
        attempts.append(result)
        if result["foreign_cpu"] <= FOREIGN_LIMIT:
            break
        if foreign_before > FOREIGN_LIMIT:
            log(f"    noisy run ({result['foreign_cpu']:.2f} foreign cores); the host never got quiet, kept")
            break  # busy for longer than the probes: repeating would only cost time
        log(f"    noisy run ({result['foreign_cpu']:.2f} foreign cores), repeating")
    best = min(attempts, key=lambda r: r["foreign_cpu"])
    best["attempts"] = len(attempts)
    return best


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict]) -> dict:
    """{scenario: {target: medians}} over the rounds."""
    out: dict = {}
    for scenario, (_, _, names) in SCENARIOS.items():
        out[scenario] = {}
        for name in names:
            rs = [r for r in runs if r["scenario"] == scenario and r["target"] == name]
            if not rs:
                continue
            s = {k: median([r[k] for r in rs if k in r]) for k in
                 ("rps", "mib_s", "p50_ms", "p99_ms", "proxy_cpu", "backend_cpu", "wrk_cpu", "foreign_cpu")}
            s["runs_rps"] = [round(r["rps"]) for r in rs]
            s["runs_mib_s"] = [round(r["mib_s"], 1) for r in rs]
            s["non_2xx"] = sum(r["non_2xx"] for r in rs)
            s["socket_errors"] = sum(r["socket_errors"] for r in rs)
            s["cpu_us_per_req"] = (s["proxy_cpu"] / s["rps"] * 1e6) if s["rps"] and s["proxy_cpu"] else None
            s["rps_per_core"] = (s["rps"] / s["proxy_cpu"]) if s["proxy_cpu"] else None
            s["mib_s_per_core"] = (s["mib_s"] / s["proxy_cpu"]) if s["proxy_cpu"] else None
            out[scenario][name] = s
    return out


def goals(summary: dict, runs: list[dict] = ()) -> list[dict]:
    """Each goal's ratio of medians, its CPU-normalised ratio, and its ratio in every round where
    both sides ran with the host quiet (the cleanest single comparisons of a noisy run)."""
    by_key = {(r["scenario"], r["target"], r["round"]): r for r in runs}
    rows = []
    for text, scenario, metric, num, den, minimum in GOALS:
        a = summary.get(scenario, {}).get(num, {}).get(metric)
        b = summary.get(scenario, {}).get(den, {}).get(metric)
        ratio = a / b if a and b else None
        per_core = {"rps": "rps_per_core", "mib_s": "mib_s_per_core"}[metric]
        ea = summary.get(scenario, {}).get(num, {}).get(per_core)
        eb = summary.get(scenario, {}).get(den, {}).get(per_core)
        rows.append({"goal": text, "ratio": ratio, "minimum": minimum,
                     "met": None if ratio is None else ratio >= minimum,
                     "per_core_ratio": ea / eb if ea and eb else None,
                     "quiet_round_ratios": _quiet_ratios(by_key, scenario, metric, num, den)})
    return rows


def _quiet_ratios(by_key: dict, scenario: str, metric: str, num: str, den: str) -> list[float]:
    out = []
    for (sc, target, rnd), a in sorted(by_key.items(), key=lambda kv: kv[0][2]):
        b = by_key.get((scenario, den, rnd))
        if sc == scenario and target == num and b and a[metric] and b[metric] \
                and max(a["foreign_cpu"], b["foreign_cpu"]) <= FOREIGN_LIMIT:
            out.append(round(a[metric] / b[metric], 2))
    return out


# --------------------------------------------------------------------------- report


def _f(value, fmt: str) -> str:
    return "–" if value is None or value != value else format(value, fmt)


def _ratio(summary: dict, scenario: str, metric: str, name: str, ref: str) -> str:
    a = summary[scenario].get(name, {}).get(metric)
    b = summary[scenario].get(ref, {}).get(metric)
    return _f(a / b if a and b else None, ".2f")


def markdown(result: dict) -> str:
    meta, summary = result["meta"], result["summary"]
    lines = [f"# Proxy benchmark ({'quick smoke run' if meta['quick'] else 'full run'})", "",
             f"{meta['date']} · commit `{meta['commit']}`{' (proxy tree dirty)' if meta['dirty'] else ''} · "
             f"{meta['rounds']} interleaved round(s) × {meta['duration']:g} s per run · medians · "
             f"proxies on CPU{PROXY_CPU}, backend and wrk on CPU{LOAD_CPU}"
             f"{'' if meta['pinned'] else ' (NOT pinned: fewer than 2 CPUs)'} · {meta['versions']['nginx']}, "
             f"{meta['versions']['haproxy']}, {meta['versions']['wrk']}, Python {meta['versions']['python']}", ""]
    for small, small_title in (("small", "Small responses (100 B, keep-alive, `wrk -t1 -c50`, the same request each time)"),
                               ("small-varied", "Small responses, every request different (a unique `X-Request-Id` "
                                                "per request, as traced mesh traffic has a unique `traceparent`)")):
        if not summary.get(small):
            continue
        lines += [f"## {small_title}", "",
                  "| target | req/s | runs | p50 ms | p99 ms | proxy CPU (cores) | µs CPU/req | ÷ nginx | ÷ HAProxy "
                  "| per core ÷ nginx | per core ÷ HAProxy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in summary[small].items():
            lines.append(f"| {name} | {_f(s['rps'], ',.0f')} | {', '.join(map(str, s['runs_rps']))} | "
                         f"{_f(s['p50_ms'], '.2f')} | {_f(s['p99_ms'], '.2f')} | "
                         f"{_f(s['proxy_cpu'] if name != 'direct' else None, '.2f')} | {_f(s['cpu_us_per_req'], '.1f')} | "
                         f"{_ratio(summary, small, 'rps', name, 'nginx')} | {_ratio(summary, small, 'rps', name, 'haproxy')} | "
                         f"{_ratio(summary, small, 'rps_per_core', name, 'nginx')} | "
                         f"{_ratio(summary, small, 'rps_per_core', name, 'haproxy')} |")
        lines.append("")
    for scenario, title, ref in (("big", "1 MiB responses (`wrk -t1 -c10 /big`)", "nginx"),
                                 ("tcp", "TCP relay of the 1 MiB stream (`wrk -t1 -c10 /big` through L4)", "haproxy-tcp")):
        if not summary.get(scenario):
            continue
        lines += [f"## {title}", "",
                  f"| target | MiB/s | runs | p99 ms | proxy CPU (cores) | MiB/s per proxy core | ÷ {ref} | per core ÷ {ref} |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in summary[scenario].items():
            lines.append(f"| {name} | {_f(s['mib_s'], ',.0f')} | {', '.join(map(str, s['runs_mib_s']))} | "
                         f"{_f(s['p99_ms'], '.2f')} | {_f(s['proxy_cpu'] if name != 'direct' else None, '.2f')} | "
                         f"{_f(s['mib_s_per_core'] if name != 'direct' else None, ',.0f')} | "
                         f"{_ratio(summary, scenario, 'mib_s', name, ref)} | "
                         f"{_ratio(summary, scenario, 'mib_s_per_core', name, ref) if name != 'direct' else '–'} |")
        lines.append("")
    lines += ["## Goals (ratios of medians in this run)", "",
              "| goal | ratio | met | per proxy CPU core (context) | rounds with the host quiet |",
              "|---|---|---|---|---|"]
    for g in result["goals"]:
        met = "–" if g["met"] is None else ("yes" if g["met"] else "**no**")
        quiet = ", ".join(f"{x:.2f}" for x in g.get("quiet_round_ratios") or []) or "none"
        lines.append(f"| {g['goal']} | {_f(g['ratio'], '.2f')} | {met} | {_f(g.get('per_core_ratio'), '.2f')} | {quiet} |")
    lines.append("")
    foreign = [r["foreign_cpu"] for r in result["runs"]]
    noisy = [f"{r['scenario']}/{r['target']} round {r['round']} ({r['foreign_cpu']:.2f})"
             for r in result["runs"] if r["foreign_cpu"] > FOREIGN_LIMIT]
    if not noisy:
        lines.append(f"Foreign CPU (other work on the host) stayed below {FOREIGN_LIMIT} core in every run.")
    else:
        lines.append(f"Foreign CPU (other work on this shared host) was above {FOREIGN_LIMIT} core in "
                     f"{len(noisy)} of {len(foreign)} runs (median {median(foreign):.2f}, max {max(foreign):.2f} cores)"
                     + (f": {', '.join(noisy)}." if len(noisy) <= 6 else "; the proxies then get less than "
                        "their core, so the per-core columns are the steadier comparison."))
    errors = [f"{n}: {e}" for n, e in result["errors"].items()]
    if errors:
        lines += ["", "Targets not measured:", *[f"- {e}" for e in errors]]
    if result.get("lightmesh_metrics"):
        lines += ["", f"Lightmesh /metrics after the run: {result['lightmesh_metrics']}"]
    return "\n".join(lines) + "\n"


def scrape_lightmesh(admin_port: int) -> dict:
    """Requests counted by code and rate-limited total: proof the route ran the chain."""
    try:
        _, body = http_get(admin_port, "/metrics", timeout=5)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
    out: dict = {}
    for line in body.decode(errors="replace").splitlines():
        m = re.match(r'lightmesh_proxy_(requests_total|rate_limited_total|acl_denied_total|retries_total)'
                     r'\{([^}]*)\}\s+([\d.e+]+)', line)
        if m:
            code = re.search(r'code="(\d+)"', m.group(2))
            key = m.group(1) + (f"[{code.group(1)}]" if code else "")
            out[key] = out.get(key, 0) + float(m.group(3))
    return out


# --------------------------------------------------------------------------- main


def versions() -> dict:
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, timeout=10)
            return (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"
    v = {"nginx": first_line(["nginx", "-v"]).replace("nginx version: ", ""),
         "haproxy": " ".join(first_line(["haproxy", "-v"]).split()[:3]),
         "wrk": " ".join(first_line(["wrk", "-v"]).split()[:2]),
         "python": platform.python_version()}
    for mod in ("uvloop", "httptools"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    return v


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, timeout=10).stdout.decode().strip()
    except Exception:  # noqa: BLE001
        return ""


def options(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_proxy.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
                   help="short smoke run: 1 round of 2 s (env BENCH_QUICK=1)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "0") or 0))
    p.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", "0") or 0))
    p.add_argument("--targets", default="", help="comma-separated subset (default: all)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--self-check", action="store_true", help="check the harness's pure parts and exit")
    p.add_argument("--render", metavar="JSON", help="re-render the tables of a results JSON (recomputes medians)")
    a = p.parse_args(argv or [])
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    if not 1 <= a.rounds <= 20 or not 0.5 <= a.duration <= 120:
        p.error("--rounds must be 1-20 and --duration 0.5-120 s")
    return a


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through main's finally: every started process is killed


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _main(args: argparse.Namespace) -> int:
    if args.self_check:
        return self_check()
    if args.render:
        return render(Path(args.render))
    missing = [tool for tool in ("nginx", "haproxy", "wrk", "taskset") if not shutil.which(tool)]
    if missing:
        print(f"bench proxy: missing {', '.join(missing)} (apt-get install -y nginx haproxy wrk util-linux)")
        return 1
    pin = (os.cpu_count() or 1) >= 2
    proxy_cpu, load_cpu = (PROXY_CPU, LOAD_CPU) if pin else ("", "")
    wanted = set(filter(None, args.targets.split(","))) or None

    def log(msg: str) -> None:
        print(msg, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="lightmesh-bench-"))
    (workdir / "www").mkdir()
    big = os.urandom(BIG_SIZE)
    (workdir / "www" / "big").write_bytes(big)
    big_md5 = hashlib.md5(big).hexdigest()
    for sub in ("backend-tmp", "nginx-proxy-tmp"):
        (workdir / sub).mkdir()
    (p_backend, p_nginx, p_haproxy, p_haproxy_tcp, p_splice, p_lm, p_lm_tcp, p_admin, p_floor) = free_ports(9)
    (workdir / "backend.conf").write_text(backend_conf(workdir, p_backend))
    (workdir / "nginx-proxy.conf").write_text(nginx_proxy_conf(workdir, p_nginx, p_backend))
    (workdir / "haproxy-http.cfg").write_text(haproxy_conf(p_haproxy, p_backend, "http"))
    (workdir / "haproxy-tcp.cfg").write_text(haproxy_conf(p_haproxy_tcp, p_backend, "tcp"))
    (workdir / "haproxy-tcp-splice.cfg").write_text(haproxy_conf(p_splice, p_backend, "tcp", splice=True))
    (workdir / "lightmesh.json").write_text(lightmesh_config(p_lm, p_lm_tcp, p_backend).to_json())

    backend = Target("direct", p_backend, ["nginx", "-e", str(workdir / "backend-error.log"), "-p", str(workdir),
                                           "-c", str(workdir / "backend.conf")], load_cpu)
    lm_argv = [sys.executable, "-m", "lightmesh", "proxy", "--config", str(workdir / "lightmesh.json"),
               "--workers", "1", "--admin-port", str(p_admin), "--admin-address", "127.0.0.1",
               "--log-level", "warning"]
    lightmesh = Target("lightmesh", p_lm, lm_argv, proxy_cpu, env=lightmesh_env())
    all_targets = [
        backend,
        Target("nginx", p_nginx, ["nginx", "-e", str(workdir / "nginx-proxy-error.log"), "-p", str(workdir),
                                  "-c", str(workdir / "nginx-proxy.conf")], proxy_cpu),
        Target("haproxy", p_haproxy, ["haproxy", "-db", "-f", str(workdir / "haproxy-http.cfg")], proxy_cpu),
        Target("haproxy-tcp", p_haproxy_tcp, ["haproxy", "-db", "-f", str(workdir / "haproxy-tcp.cfg")], proxy_cpu),
        Target("haproxy-tcp-splice", p_splice, ["haproxy", "-db", "-f", str(workdir / "haproxy-tcp-splice.cfg")],
               proxy_cpu),
        lightmesh,
        Target("floor", p_floor, [sys.executable, str(HERE / "floor_relay.py"), "--port", str(p_floor),
                                  "--backend", str(p_backend)], proxy_cpu, env=MALLOC_ENV),
    ]
    errors: dict[str, str] = {}
    if wanted is None or wanted & {"lightmesh", "lightmesh-tcp"}:
        why = lightmesh_available()
        if why:
            errors["lightmesh"] = why
            all_targets.remove(lightmesh)
    else:
        all_targets.remove(lightmesh)
    if wanted:
        all_targets = [t for t in all_targets if t is backend or t.name in wanted
                       or (t is lightmesh and "lightmesh-tcp" in wanted)]
    started = list(all_targets)
    runs: list[dict] = []
    lightmesh_metrics: dict = {}
    try:
        for t in started:
            start(t, workdir)
        for t in started:
            wait_ready(t, "/", 60 if t is lightmesh else 15)
            if not t.error:
                verify(t, big_md5)
        measured: dict[str, Target] = {}
        for t in started:
            if t.error:
                errors[t.name] = t.error
                log(f"  {t.name}: {t.error}")
                continue
            measured[t.name] = t
        if backend.error:
            log("bench proxy: the backend did not start; nothing to measure")
            return 1
        if "lightmesh" in measured:
            # The TCP route of the same Lightmesh process: its own port, the same session's CPU.
            lm_tcp = Target("lightmesh-tcp", p_lm_tcp, [], proxy_cpu, proc=lightmesh.proc, log=lightmesh.log)
            verify(lm_tcp, big_md5)
            if lm_tcp.error:
                errors["lightmesh-tcp"] = lm_tcp.error
            else:
                measured["lightmesh-tcp"] = lm_tcp
        if wanted:
            measured = {n: t for n, t in measured.items() if n in wanted or t is backend}
        quiet_window = 0.5 if args.quick else 1.0
        plan = [(scenario, name) for scenario, (_, _, names) in SCENARIOS.items() for name in names if name in measured]
        log(f"bench proxy: {len(plan)} runs × {args.rounds} round(s) × {args.duration:g} s; "
            f"targets {', '.join(measured)}; workdir {workdir}")
        for scenario, name in plan:  # warm-up: connections, caches, pools
            path, connections, _ = SCENARIOS[scenario]
            subprocess.run(pinned(load_cpu, ["wrk", "-t1", f"-c{connections}", "-d1s", f"http://127.0.0.1:{measured[name].port}{path}"]),
                           capture_output=True, timeout=30)
        for rnd in range(1, args.rounds + 1):
            for scenario, name in plan:
                r = measure(scenario, measured[name], started, backend, args.duration, quiet_window, log)
                r.update({"scenario": scenario, "target": name, "round": rnd})
                runs.append(r)
                log(f"  round {rnd} {scenario:5} {name:13} {r['rps']:>9,.0f} req/s {r['mib_s']:>7,.0f} MiB/s "
                    f"p50 {r.get('p50_ms', 0):.2f} p99 {r.get('p99_ms', 0):.2f} ms  proxy {r['proxy_cpu']:.2f} "
                    f"backend {r['backend_cpu']:.2f} wrk {r['wrk_cpu']:.2f} foreign {r['foreign_cpu']:.2f} cores"
                    f"{'  ERRORS' if r['non_2xx'] or r['socket_errors'] else ''}")
        if "lightmesh" in measured or "lightmesh-tcp" in measured:
            lightmesh_metrics = scrape_lightmesh(p_admin)
    finally:
        stop_all(started)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(runs)
    result = {
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
                 "rounds": args.rounds, "duration": args.duration, "pinned": pin,
                 "commit": git("rev-parse", "--short", "HEAD"),
                 "dirty": bool(git("status", "--porcelain", "proxy_image/lightmesh/proxy")),
                 "versions": versions(), "cpus": os.cpu_count(), "machine": platform.machine(),
                 "foreign_limit": FOREIGN_LIMIT, "lightmesh_argv": lm_argv[1:], "malloc_env": MALLOC_ENV},
        "summary": summary, "goals": goals(summary, runs), "runs": runs, "errors": errors,
        "lightmesh_metrics": lightmesh_metrics,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "proxy-quick" if args.quick else "proxy"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    bad = [r for r in runs if r["non_2xx"] or r["socket_errors"]]
    if bad:
        print(f"bench proxy: {len(bad)} run(s) had non-2xx responses or socket errors")
    if args.strict and any(g["met"] is not True for g in result["goals"]):
        return 1
    return 1 if bad else 0


def render(path: Path) -> int:
    """Recompute summary, goals and the markdown next to a results JSON (after a report change)."""
    result = json.loads(path.read_text())
    result["summary"] = summarize(result["runs"])
    result["goals"] = goals(result["summary"], result["runs"])
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    path.with_suffix(".md").write_text(md)
    print(md)
    return 0


# --------------------------------------------------------------------------- self-check


_WRK_SAMPLE = """Running 5s test @ http://127.0.0.1:9001/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.34ms  412.10us  12.00ms   90.00%
    Req/Sec    34.50k     2.11k   37.86k    80.00%
  Latency Distribution
     50%    1.32ms
     75%  950.00us
     90%    1.72ms
     99%    2.67s
  171712 requests in 5.00s, 31.60MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:  34301.53
Transfer/sec:      1.50GB
"""


def self_check() -> int:
    """The harness's pure parts, without starting a process: parse, summarize, goals, report, config."""
    r = parse_wrk(_WRK_SAMPLE)
    assert r["rps"] == 34301.53 and r["mib_s"] == 1536.0, r
    assert (r["p50_ms"], r["p75_ms"], r["p99_ms"]) == (1.32, 0.95, 2670.0), r
    assert (r["requests"], r["seconds"], r["non_2xx"], r["socket_errors"]) == (171712, 5.0, 3, 3), r
    try:
        parse_wrk("garbage")
    except ValueError:
        pass
    else:
        raise AssertionError("parse_wrk accepted garbage")
    runs = []
    for rnd, factor in enumerate((1.0, 1.2, 0.8), 1):
        for scenario, (_, _, names) in SCENARIOS.items():
            for i, name in enumerate(names):
                runs.append({"scenario": scenario, "target": name, "round": rnd, "rps": 1000 * (i + 1) * factor,
                             "mib_s": 100.0 * (i + 1) * factor, "p50_ms": 1.0, "p99_ms": 2.0, "proxy_cpu": 0.5,
                             "backend_cpu": 0.4, "wrk_cpu": 0.4, "foreign_cpu": 0.0, "non_2xx": 0,
                             "socket_errors": 0})
    summary = summarize(runs)
    assert summary["small"]["nginx"]["rps"] == 2000 and summary["small"]["nginx"]["runs_rps"] == [2000, 2400, 1600]
    runs[0]["foreign_cpu"] = 0.5  # round 1 small/direct noisy: no effect on the goals' quiet rounds
    g = {row["goal"]: row for row in goals(summary, runs)}
    assert g["small-request req/s ≥ 0.9× nginx"]["quiet_round_ratios"] == [2.0, 2.0, 2.0]
    assert g["small-request req/s ≥ 1.0× HAProxy"]["ratio"] == 4 / 3 and g["small-request req/s ≥ 1.0× HAProxy"]["met"]
    assert g["TCP relay throughput ≥ 1.0× HAProxy mode tcp"]["ratio"] == 3.0
    assert goals({})[0]["met"] is None
    meta = {"quick": True, "date": "now", "commit": "abc", "dirty": False, "rounds": 3, "duration": 5.0,
            "pinned": True, "versions": {"nginx": "n", "haproxy": "h", "wrk": "w", "python": "3"}}
    md = markdown({"meta": meta, "summary": summary, "goals": goals(summary, runs), "runs": runs, "errors": {"x": "why"}})
    assert "| lightmesh | 4,000 |" in md and "| yes |" in md and "- x: why" in md, md
    cfg = lightmesh_config(18080, 18081, 18082)
    assert [m.name for m in cfg.http.middlewares] == ["acl", "ratelimit", "retry"] and cfg.tcp[0].port == 18081
    for text in (backend_conf(Path("/d"), 1), nginx_proxy_conf(Path("/d"), 2, 1)):
        assert text.count("{") == text.count("}") and "127.0.0.1:" in text
    assert "mode tcp" in haproxy_conf(1, 2, "tcp") and "http-reuse always" in haproxy_conf(1, 2, "http")
    assert "splice-auto" in haproxy_conf(1, 2, "tcp", splice=True) and "splice" not in haproxy_conf(1, 2, "tcp")
    assert pinned("1", ["x"]) == ["taskset", "-c", "1", "x"] and pinned("", ["x"]) == ["x"]
    assert busy_seconds() > 0 and os.getsid(0) in session_cpu({os.getsid(0)})
    print("bench proxy self-check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
