"""h2c (gRPC-style) streams through the Lightmesh proxy: how many per second one worker core relays.

Not a goal of the issues (the proxy goals are HTTP/1.1): a figure for users who put gRPC through the
mesh. The backend is nginx serving 100 B over HTTP/2 cleartext (``listen ... http2``, prior
knowledge), pinned to CPU0 with the load generator; ``h2load -c10 -m10`` (10 connections, 10
concurrent streams each) runs against it directly and through ``lightmesh proxy --workers 1``
(pinned to CPU1) with the benchmark's mesh chain (allow-list, rate limit set high, retry) and an
``h2c://`` server. Medians of interleaved rounds; proxy CPU from /proc as in ``bench_proxy.py``.

Usage: ``make bench BENCH=h2c`` or ``.venv/bin/python bench/bench_h2c.py [--quick]``; needs ``nginx``
and ``h2load`` (Debian ``nghttp2-client``). Writes ``bench/results/h2c.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO / "proxy_image"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def _proxy_bench():
    """bench_proxy's process helpers (loaded by path: bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_proxy_helpers", HERE / "bench_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lightmesh_config(port: int, backend: int):
    from lightmesh import config as c

    http = c.HTTPConfig(
        entry_points=[c.EntryPoint(name="bench", address="127.0.0.1", port=port)],
        routers=[c.Router(name="bench", entry_points=["bench"], service="backend",
                          middlewares=["acl", "ratelimit", "retry"])],
        services=[c.HTTPService(name="backend", servers=[c.HTTPServer(url=f"h2c://127.0.0.1:{backend}")])],
        middlewares=[c.AllowListMiddleware(name="acl", source_ranges=["127.0.0.0/8"]),
                     c.RateLimitMiddleware(name="ratelimit", average=1_000_000_000, burst=1_000_000_000),
                     c.RetryMiddleware(name="retry", attempts=1)])
    return c.make_config(1, http=http)


def h2load(port: int, requests: int, timeout: float, clients: int = 10) -> dict:
    r = subprocess.run(["taskset", "-c", "0", "h2load", "-n", str(requests), "-c", str(clients), "-m", "10",
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=timeout)
    out = r.stdout
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if r.returncode != 0 or not rps or not done:
        raise RuntimeError(f"h2load failed: {out[-400:]} {r.stderr[-400:]}")
    return {"rps": float(rps.group(1)), "succeeded": int(done.group(1)), "failed": int(done.group(2)) + int(done.group(3))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"))
    ap.add_argument("--rounds", type=int, default=0)
    args = ap.parse_args(argv or [])
    rounds = args.rounds or (1 if args.quick else 3)
    through = 5_000 if args.quick else 40_000  # streams per run through the proxy (~8 s each)
    missing = [tool for tool in ("nginx", "h2load", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"bench h2c: skipped, missing {', '.join(missing)} (apt-get install -y nginx nghttp2-client)")
        return 0
    bp = _proxy_bench()
    workdir = Path(tempfile.mkdtemp(prefix="lightmesh-h2c-"))
    p_backend, p_proxy, p_admin = bp.free_ports(3)
    (workdir / "backend-tmp").mkdir()
    (workdir / "backend.conf").write_text(bp.backend_conf(workdir, p_backend, http2=True))
    (workdir / "lightmesh.json").write_text(lightmesh_config(p_proxy, p_backend).to_json())
    backend = bp.Target("backend", p_backend, ["nginx", "-e", str(workdir / "backend-error.log"), "-p", str(workdir),
                                               "-c", str(workdir / "backend.conf")], "0")
    proxy = bp.Target("lightmesh", p_proxy, [sys.executable, "-m", "lightmesh", "proxy", "--config",
                                             str(workdir / "lightmesh.json"), "--workers", "1", "--admin-port",
                                             str(p_admin), "--admin-address", "127.0.0.1", "--log-level", "warning"],
                      "1", env=bp.lightmesh_env())
    runs: dict[str, list[dict]] = {"direct": [], "lightmesh": []}
    try:
        bp.start(backend, workdir)
        bp.start(proxy, workdir)
        deadline = time.monotonic() + 60
        while True:  # ready: one stream through the proxy succeeds
            try:
                if h2load(p_proxy, 1, 10, clients=1)["succeeded"] == 1:
                    break
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline or proxy.proc.poll() is not None:
                raise RuntimeError(f"the proxy did not serve h2c: {bp.tail(proxy.log)}")
            time.sleep(0.5)
        h2load(p_proxy, 2_000, 60)  # warm-up
        for _ in range(rounds):
            runs["direct"].append(h2load(p_backend, through * 8, 120))
            cpu0 = bp.session_cpu({proxy.sid})[proxy.sid]
            run = h2load(p_proxy, through, 120)
            cpu = bp.session_cpu({proxy.sid})[proxy.sid] - cpu0
            run["us_cpu_per_stream"] = round(cpu / run["succeeded"] * 1e6, 1) if run["succeeded"] else None
            runs["lightmesh"].append(run)
    finally:
        bp.stop_all([proxy, backend])
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {name: {"rps": round(statistics.median(r["rps"] for r in rs)),
                      "failed": sum(r["failed"] for r in rs)} for name, rs in runs.items()}
    summary["lightmesh"]["us_cpu_per_stream"] = statistics.median(r["us_cpu_per_stream"] for r in runs["lightmesh"])
    result = {"time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": bp.git("rev-parse", "--short", "HEAD"),
              "rounds": rounds, "summary": summary, "runs": runs}
    name = "h2c-quick.json" if args.quick else "h2c.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=1) + "\n")
    lm, direct = summary["lightmesh"], summary["direct"]
    print(f"h2c, h2load -c10 -m10, 100 B: direct {direct['rps']:,} streams/s; through lightmesh (1 worker) "
          f"{lm['rps']:,} streams/s, {lm['us_cpu_per_stream']} µs proxy CPU per stream; "
          f"failed {direct['failed'] + lm['failed']}")
    return 1 if direct["failed"] + lm["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
