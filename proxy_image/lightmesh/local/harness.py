"""Run the real mesh on loopback: stand-ins, controller (file source), mesh DNS and proxy.

:class:`LocalMesh` is what ``lightmesh local``, ``lightmesh demo`` and the end-to-end tests share:

1. PATH (manifests, or a Pulumi program rendered first) → :func:`lightmesh.local.cluster.synthesize`;
2. the synthesized objects are written to a state directory, which the controller reads as its
   cluster (``lightmesh controller --manifests DIR``: file source, shadow Services in memory with
   ClusterIPs from 127.1.0.0/16, proxy listening on those ClusterIPs at the Services' own ports —
   where kube-proxy would forward them in a cluster);
3. the proxy long-polls the controller exactly as in a cluster;
4. stand-ins serve each pod's address.

Changing objects (:meth:`LocalMesh.apply`, :meth:`LocalMesh.delete`) rewrites the state directory,
so the controller sees it like a watch event. Processes are children of this one and are stopped
(SIGTERM, then SIGKILL) by :meth:`LocalMesh.stop`. They run in sessions of their own (a Ctrl-C in the
terminal reaches only this process, which stops them in order); so that they never outlive it — a
SIGKILL, a crash — each asks the kernel for SIGTERM when this process dies (Linux
``PR_SET_PDEATHSIG``, :func:`die_with_parent`; the proxy's workers follow their supervisor). The
kernel ties that to the *thread* that started the child: children are started from the event loop's
thread, which lives as long as the mesh.

Two decisions are taken from the environment and the manifests when not forced:

* ACL mode: on when the manifests run the controller with ``--acl`` (what ``MeshInstall(acl=True)``
  renders), so a program behaves locally as it would in a cluster (:func:`declared_acl`); the other
  mesh settings of that controller — domains, default traffic type, mesh namespace, watched and
  ignored namespaces, port ranges — are passed on to the local controller (:func:`declared_controller`);
* high ports: when this process may not bind ports below ``ip_unprivileged_port_start`` (no root,
  no ``CAP_NET_BIND_SERVICE``), every Service and pod port below it is served at port + offset
  (80 → 8080; :class:`lightmesh.local.cluster.HighPorts`). :meth:`LocalMesh.local_port` and
  :meth:`LocalMesh.services` give the ports where things really answer.

Every failure is a :class:`LocalModeError` whose message is one line naming what failed and what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightmesh import wire
from lightmesh.controller.model import ALWAYS_IGNORED_NAMESPACES
from lightmesh.local import cluster as local_cluster
from lightmesh.local.standins import StandIn

MESH_DOMAIN_FOR_DISPLAY = "traefik.mesh"


UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
PROBE_ADDRESS = "127.255.255.254"  # outside the shadow (127.1/16) and pod (127.2/16) ranges
RENDER_TIMEOUT_SECONDS = 300


WORK_DIR_PREFIX = "lightmesh-local-"  # the work directory: tempfile.mkdtemp(prefix=...) in the temp dir
OWNER_FILE = "owner.json"  # in it: the process that made it (see remove_stale_work_dirs)


class LocalModeError(RuntimeError):
    """Local mode cannot go on; the message names the object or address and the remedy."""


class Interrupted(LocalModeError):
    """Ctrl-C arrived while the mesh was starting (e.g. during the render)."""


def free_port(address: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM):
    """A ``preexec_fn`` that has the child get ``sig`` when this process dies (``prctl(PR_SET_PDEATHSIG)``);
    None where that does not exist (not Linux), so callers pass it on unconditionally.

    The libc function is looked up here, before the fork: the child only makes the one call (no import,
    no lookup, in a child forked from a process with threads). If this process died between the fork
    and the call, nobody would send the signal: the child checks its parent and sends it to itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
    return preexec


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    here = Path(__file__).resolve().parents[2]  # proxy_image/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(here), env.get("PYTHONPATH", "")) if p)
    # The proxy's large-body path: see shared reference, malloc trim/re-grow page faults.
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "268435456")
    env.setdefault("MALLOC_TOP_PAD_", "67108864")
    return env


async def render_if_program(path: Path, out_dir: Path, acl: bool | None) -> Path:
    """A Pulumi program is rendered (in a child process: the SDK's globals stay clean) first.

    ``acl`` given: passed as the stack config ``acl`` (the examples read it); None: the program's own.
    Cancelling (Ctrl-C while starting) kills the render at once.
    """
    if not (path / "Pulumi.yaml").is_file():
        return path
    cmd = [sys.executable, "-m", "lightmesh", "render", str(path), "-o", str(out_dir)]
    if acl is not None:
        cmd += ["--config", f"acl={'true' if acl else 'false'}"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                env=_child_env(), preexec_fn=die_with_parent())
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), RENDER_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        raise LocalModeError(f"rendering {path} took more than {RENDER_TIMEOUT_SECONDS} s; run "
                             f"'lightmesh render {path} -o DIR' to see where it hangs") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode in (130, -signal.SIGINT):  # Ctrl-C reached the render too (same process group)
        raise Interrupted(f"interrupted while rendering {path}")
    if proc.returncode != 0:
        lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        reason = lines[-1].removeprefix("lightmesh render: ") if lines else f"exit code {proc.returncode}"
        raise LocalModeError(f"rendering {path} failed: {reason}")
    return out_dir


# The controller flags a program's MeshInstall sets that local mode passes on to its own controller.
# Not passed: where it serves and reads (local mode's own: --manifests, --api-*, --dns-*, --listen-mode,
# --kubeconfig), --leader-election (one controller here), --log-* (local's --log-level) and
# --otlp-endpoint (an in-cluster address, unreachable from here).
PASSED_ON_FLAGS = ("namespace", "default_mode", "domains", "watch_namespaces", "ignore_namespaces",
                   "http_port_base", "http_port_limit", "tcp_port_base", "tcp_port_limit", "udp_port_base",
                   "udp_port_limit")


@dataclass(frozen=True)
class DeclaredController:
    """The controller the manifests run (the Deployment ``MeshInstall`` renders), as its own flag
    parser reads its command line: local mode runs its controller with the same mesh settings."""

    where: str  # "Deployment lightmesh/lightmesh-controller"
    acl: bool
    namespace: str
    default_mode: str
    domains: tuple[str, ...]
    watch_namespaces: tuple[str, ...]
    ignore_namespaces: tuple[str, ...]
    args: tuple[str, ...]  # the PASSED_ON_FLAGS as command-line arguments

    def differences(self) -> list[str]:
        """The settings that differ from the controller's defaults, for the printout."""
        out = []
        if self.domains != tuple(wire.DEFAULT_DOMAINS):
            out.append(f"domains {', '.join(self.domains)}")
        if self.default_mode != "http":
            out.append(f"default traffic type {self.default_mode}")
        if self.namespace != wire.DEFAULT_MESH_NAMESPACE:
            out.append(f"mesh namespace {self.namespace} (ignored, as in a cluster)")
        if self.watch_namespaces:
            out.append(f"only namespaces {', '.join(self.watch_namespaces)}")
        if self.ignore_namespaces:
            out.append(f"namespaces {', '.join(self.ignore_namespaces)} ignored")
        return out


def _controller_argv(obj: dict) -> list[str] | None:
    """The arguments after ``controller`` of a Deployment container running ``lightmesh controller``
    (``command: [lightmesh, controller, ...]``, or ``args: [controller, ...]`` of a Lightmesh image)."""
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        command = [str(a) for a in container.get("command") or []]
        argv = command + [str(a) for a in container.get("args") or []]
        mesh = any("lightmesh" in word for word in argv) or "lightmesh" in str(container.get("image", ""))
        for i, word in enumerate(argv):
            if mesh and word == "controller" and (i in (0, len(command)) or argv[i - 1].endswith("lightmesh")):
                return argv[i + 1:]
    return None


def declared_controller(manifests: list[dict]) -> DeclaredController | None:
    """The first Deployment whose container runs ``lightmesh controller ...``, read with the
    controller's own flag definitions; None when the manifests run no controller."""
    from lightmesh.controller.main import configure

    for obj in manifests:
        if obj.get("kind") != "Deployment" or (argv := _controller_argv(obj)) is None:
            continue
        meta = obj.get("metadata") or {}
        where = f"Deployment {meta.get('namespace', 'default')}/{meta.get('name')}"
        parser = argparse.ArgumentParser(prog=f"{where}: lightmesh controller", add_help=False, exit_on_error=False)
        configure(parser)
        try:
            flags, _ = parser.parse_known_args(argv)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise LocalModeError(f"{where} runs the controller with flags local mode cannot read "
                                 f"({exc if isinstance(exc, argparse.ArgumentError) else ' '.join(argv)}); fix them "
                                 "(or the MeshInstall args that render them)") from None
        args: list[str] = []
        for name in PASSED_ON_FLAGS:
            value = getattr(flags, name)
            if isinstance(value, (list, tuple)):
                if not value:
                    continue
                value = ",".join(value)
            args += [f"--{name.replace('_', '-')}", str(value)]
        return DeclaredController(where, bool(flags.acl), flags.namespace, flags.default_mode, tuple(flags.domains),
                                  tuple(flags.watch_namespaces), tuple(flags.ignore_namespaces), tuple(args))
    return None


def declared_acl(manifests: list[dict]) -> str | None:
    """Where the manifests ask for ACL mode — a Deployment whose container runs ``lightmesh
    controller ... --acl``, as ``MeshInstall(acl=True)`` renders it — or None."""
    declared = declared_controller(manifests)
    return f"{declared.where} runs the controller with --acl" if declared and declared.acl else None


def display_domain(domains: tuple[str, ...] | list[str]) -> str:
    """The mesh domain the printout uses: ``traefik.mesh`` (what Traefik Mesh users type) when the
    mesh serves it, else its first domain."""
    names = [d.strip(".").lower() for d in domains]
    return MESH_DOMAIN_FOR_DISPLAY if MESH_DOMAIN_FOR_DISPLAY in names or not names else names[0]


# ---------------------------------------------------------------------------- work directories
#
# A SIGKILL of ``lightmesh local`` (or ``lightmesh demo``) leaves its work directory behind (its
# children die with it, see die_with_parent; nothing runs to remove it). Each directory records its
# owner: PID, start time (/proc/<pid>/stat field 22, so a PID reused by another process is not taken
# for the owner), boot and PID namespace (where the PID and start time mean something). The next one
# to start removes the directories, in the temp dir, of the current user, whose owner is gone.


def _process_identity(pid: int | str = "self") -> dict | None:
    """What tells this process apart from any other, past or future, on this machine (Linux); None
    when ``pid`` does not exist or /proc cannot say, or when /proc is not our PID namespace's (a
    sandbox that kept the host's /proc): its numbers are not ours then, so nothing can be judged."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")  # the namespace its PID is read in: ours
        start_time = int(fields[19])  # field 22, clock ticks since boot
    except (OSError, ValueError, IndexError):
        return None
    return {"pid": int(pid) if pid != "self" else os.getpid(), "start_time": start_time, "boot_id": boot_id,
            "pid_namespace": namespace}


def _write_owner(work_dir: Path) -> None:
    identity = _process_identity()
    if identity is not None:
        (work_dir / OWNER_FILE).write_text(json.dumps(identity) + "\n")


def _owner_gone(work_dir: Path) -> bool:
    """True only when the directory's recorded owner is certainly not running: recorded in this boot
    and this PID namespace, and its PID is free or taken by a process started at another time.
    No record, or one that cannot be checked here: False (kept)."""
    owner_file = work_dir / OWNER_FILE
    try:
        if not owner_file.is_file() or owner_file.is_symlink():
            return False
        owner = json.loads(owner_file.read_text())
        pid, start_time = int(owner["pid"]), int(owner["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    here = _process_identity()
    if here is None or pid <= 0 or owner.get("boot_id") != here["boot_id"] \
            or owner.get("pid_namespace") != here["pid_namespace"]:
        return False
    if pid == here["pid"]:
        return start_time != here["start_time"]
    now = _process_identity(pid)
    if now is None:
        return not Path(f"/proc/{pid}").exists()  # no such process (not merely unreadable)
    return now["start_time"] != start_time


def remove_stale_work_dirs(temp_dir: str | Path | None = None) -> list[Path]:
    """Remove the work directories (``lightmesh-local-*`` in the temp dir) that belong to the
    current user and whose owner process is gone; returns the ones removed. Never one of a running
    ``lightmesh local``; never one without an owner record; never a symbolic link."""
    if not sys.platform.startswith("linux"):
        return []
    removed = []
    base = Path(temp_dir or tempfile.gettempdir())
    try:
        candidates = sorted(base.glob(WORK_DIR_PREFIX + "*"))
    except OSError:
        return []
    for path in candidates:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or not _owner_gone(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def privileged_port_limit() -> int:
    """Ports below this need CAP_NET_BIND_SERVICE (``ip_unprivileged_port_start``; 1024 if unknown)."""
    try:
        return int(UNPRIVILEGED_PORT_START.read_text())
    except (OSError, ValueError):
        return local_cluster.PRIVILEGED_PORT_LIMIT


def can_bind_privileged_ports(limit: int | None = None) -> bool:
    """Try to bind a privileged port on an unused loopback address: the kernel checks the
    capability before whether the port is free, so EACCES answers exactly this question."""
    limit = privileged_port_limit() if limit is None else limit
    if limit <= 1:
        return True
    with socket.socket() as sock:
        try:
            sock.bind((PROBE_ADDRESS, limit - 1))
        except PermissionError:
            return False
        except OSError:
            return True  # in use or no such address: not a permission problem
    return True


def _last_error_line(log_text: str) -> str:
    """The most telling line of a child's log, without its timestamp and logger."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    line = (errors or lines or ["(no output)"])[-1]
    for level in (" ERROR ", " CRITICAL "):
        if level in line:
            line = line.split(level, 1)[1]
            head, sep, rest = line.partition(": ")
            line = rest if sep and " " not in head else line  # drop "lightmesh.controller: "
    return line


def _how_it_ended(returncode: int) -> str:
    """``exited with code 1``, or ``was killed by signal SIGKILL`` (``Popen.returncode`` -9)."""
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class ServiceAccess:
    namespace: str
    name: str
    traffic_type: str | None  # what the controller decided; None when it left the Service out of its topology
    mesh_names: list[str]
    address: str | None  # the shadow ClusterIP the mesh DNS answers
    ports: list[dict]  # name, port (where it answers here), service_port (as declared), protocol
    # why it is not in the mesh: left out of the controller's topology, or kept there with no meshed port
    # (then traffic_type is set, and this is the controller's errors for it, see errors)
    excluded: str | None = None
    allowed_sources: list[dict] | None = None  # ACL mode: pods TrafficTargets let in (name, address)
    ready_endpoints: int | None = None  # ready addresses in its EndpointSlices (0: nothing answers behind it)
    # the controller's object errors for this Service (field, message), as its topology reports them
    errors: list[dict] = field(default_factory=list)

    @property
    def host(self) -> str:
        """The mesh name the printout uses (see :func:`display_domain`)."""
        domains = [n.removeprefix(f"{self.name}.{self.namespace}.") for n in self.mesh_names]
        return f"{self.name}.{self.namespace}.{display_domain(domains)}"


class LocalMesh:
    """``acl``: None = as the manifests declare (:func:`declared_acl`); ``high_ports``: None = only
    when privileged ports cannot be bound (:func:`can_bind_privileged_ports`)."""

    def __init__(self, path: str | Path, *, acl: bool | None = None, dns_port: int = wire.DEFAULT_LOCAL_DNS_PORT,
                 proxy_workers: int = 1, api_port: int | None = None, admin_port: int | None = None,
                 log_level: str = "warning", work_dir: str | Path | None = None,
                 extra_controller_args: list[str] | None = None, high_ports: bool | None = None) -> None:
        self.source = Path(path).resolve()
        self.acl_requested = acl
        self.acl = bool(acl)
        self.acl_reason = "--acl" if acl else None  # why ACL mode is on, for the output
        self.high_ports_requested = high_ports
        self.high_ports: local_cluster.HighPorts = local_cluster.NO_REMAP
        self.mesh_namespace = wire.DEFAULT_MESH_NAMESPACE
        self.domains: tuple[str, ...] = tuple(wire.DEFAULT_DOMAINS)
        self.declared: DeclaredController | None = None  # the manifests' controller and its settings
        self.dns_port = dns_port
        self.proxy_workers = proxy_workers
        self.api_port = api_port or free_port()
        self.admin_port = admin_port or free_port()
        self.log_level = log_level
        self.extra_controller_args = extra_controller_args or []
        self._own_work_dir = work_dir is None
        if self._own_work_dir:
            remove_stale_work_dirs()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
        if self._own_work_dir:
            _write_owner(self.work_dir)
        else:  # a directory given (an old work directory reused, say) is never swept
            with contextlib.suppress(OSError):
                (self.work_dir / OWNER_FILE).unlink()
        self.state_dir = self.work_dir / "state"
        self.log_dir = self.work_dir / "logs"
        self.manifests: list[dict] = []
        self.manifest_notes: list[str] = []  # e.g. an object declared twice (the later one is used)
        self.manifest_origins: list[str] = []  # where each of self.manifests was declared ("" if applied)
        self.cluster = local_cluster.LocalCluster()
        self.standins: dict[str, list[StandIn]] = {}
        self.controller: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self, timeout: float = 60.0) -> LocalMesh:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        source = await render_if_program(self.source, self.work_dir / "rendered", self.acl_requested)
        self.manifest_notes = []
        self.manifest_origins = []
        self.manifests = local_cluster.load_manifests(source, self.manifest_notes, self.manifest_origins)
        self.declared = declared_controller(self.manifests)
        if self.declared is not None:  # the mesh as the program's MeshInstall sets it up
            self.mesh_namespace, self.domains = self.declared.namespace, self.declared.domains
        if self.acl_requested is None:
            self.acl_reason = declared_acl(self.manifests)
            self.acl = self.acl_reason is not None
        self.high_ports = self._choose_high_ports()
        self._write_state()
        await self._start_standins()
        self.start_controller()
        self.start_proxy()
        await self.wait_ready(timeout)
        return self

    def _choose_high_ports(self) -> local_cluster.HighPorts:
        if self.high_ports_requested is False:
            return local_cluster.NO_REMAP
        limit = privileged_port_limit()
        if self.high_ports_requested is None:
            if can_bind_privileged_ports(limit):
                return local_cluster.NO_REMAP
            return local_cluster.high_ports_for(self.manifests, limit)
        return local_cluster.high_ports_for(self.manifests, max(limit, local_cluster.PRIVILEGED_PORT_LIMIT))

    def local_port(self, service_port: int) -> int:
        """Where a Service port declared in the manifests answers here (see high ports)."""
        return self.high_ports(service_port)

    def start_controller(self) -> None:
        args = ["controller", "--manifests", str(self.state_dir), "--listen-mode", "shadow-ip",
                "--api-address", "127.0.0.1", "--api-port", str(self.api_port),
                "--dns-address", "127.0.0.1", "--dns-port", str(self.dns_port),
                "--log-level", self.log_level, *(["--acl"] if self.acl else []),
                *(self.declared.args if self.declared else ()), *self.extra_controller_args]
        self.controller = self._spawn("controller", args)

    def start_proxy(self) -> None:
        args = ["proxy", "--controller", self.api_url, "--admin-address", "127.0.0.1",
                "--admin-port", str(self.admin_port), "--workers", str(self.proxy_workers),
                "--name", "local-proxy", "--log-level", self.log_level]
        self.proxy = self._spawn("proxy", args)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "lightmesh", *args], stdout=log, stderr=subprocess.STDOUT,
                                    env=_child_env(), start_new_session=True, preexec_fn=die_with_parent())
        finally:
            log.close()

    async def stop_controller(self) -> None:
        await asyncio.to_thread(_terminate, self.controller)
        self.controller = None

    async def restart_controller(self, timeout: float = 30.0) -> None:
        await self.stop_controller()
        self.start_controller()
        await self.wait_ready(timeout)

    def terminate_processes(self) -> None:
        """Synchronous safety net (test teardown, atexit): stop the child processes."""
        _terminate(self.proxy)
        _terminate(self.controller)
        self.proxy = self.controller = None

    async def stop(self) -> None:
        await asyncio.to_thread(self.terminate_processes)
        for standins in self.standins.values():
            for standin in standins:
                await standin.kill()
        self.standins.clear()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    async def __aenter__(self) -> LocalMesh:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ------------------------------------------------------------------ readiness

    def check_alive(self) -> None:
        """Raise LocalModeError when the controller or the proxy has exited."""
        self._check_alive()

    def _check_alive(self) -> None:
        for name, proc in (("controller", self.controller), ("proxy", self.proxy)):
            if proc is not None and proc.poll() is not None:
                raise LocalModeError(f"the {name} {_how_it_ended(proc.returncode)}: "
                                     f"{_last_error_line(self.log_tail(name, 200))}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Controller ready, proxy has a config, and every meshed Service port accepts connections."""
        deadline = time.monotonic() + timeout
        await self._poll(lambda: _http_status(self.api_url + wire.READINESS_PATH) == 200, deadline, "controller ready")
        await self._poll(lambda: _http_status(self.admin_url + "/ping") == 200, deadline, "proxy ready")
        await self.wait_for_config_applied(deadline)

    async def wait_for_config_applied(self, deadline: float) -> None:
        """Until the proxy applied the controller's newest config and listens where it says.

        Read from the proxy's ``/api/rawdata``, not by connecting: a probe connection would be counted
        as client traffic (``l4_connections_total``; in ACL mode ``acl_denied_total``, loopback being
        no pod). A worker reports a config applied, with the listeners it has open, only once
        ``Runtime.apply`` opened them (listening and accepting) — or failed to, which
        :func:`_raise_listener_errors` reports."""

        def current() -> bool:
            # Compare content hashes, not versions: a restarted controller may number the same
            # content differently, and the proxy rightly keeps a config whose ETag still matches.
            want = _http_json(self.api_url + wire.CONFIG_PATH + "?wait=0")
            have = _http_json(self.admin_url + "/api/rawdata")
            _raise_listener_errors(have)  # the proxy retries them, but waiting cannot fix them: say so now
            if not (want and have) or _hash_of(have) != want.get("hash"):
                return False
            # ... and every worker process switched to it (the supervisor hands configs out), with
            # exactly the listeners that config declares open (a Service left out has none, by design)
            expected = _listener_keys(want)
            workers = [w for w in have.get("workers") or [] if w.get("alive", True)]
            return bool(workers) and all(w.get("applied_version") == have.get("version")
                                         and expected <= set(w.get("listeners") or []) for w in workers)

        await self._poll(current, deadline, "proxy applied the newest config and listens where it says")

    async def _poll(self, check, deadline: float, what: str) -> None:
        while True:
            self._check_alive()
            if await asyncio.to_thread(check):
                return
            if time.monotonic() > deadline:
                raise LocalModeError(f"timed out waiting for: {what} (last controller message: "
                                     f"{_last_error_line(self.log_tail('controller'))}; last proxy message: "
                                     f"{_last_error_line(self.log_tail('proxy'))})")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ state changes

    def _write_state(self) -> None:
        self.cluster = local_cluster.synthesize(self.manifests, high_ports=self.high_ports,
                                                origins=self.manifest_origins)
        tmp = self.state_dir / ".cluster.yaml.tmp"
        tmp.write_text(yaml.safe_dump_all(self.cluster.objects, sort_keys=False))
        os.replace(tmp, self.state_dir / "cluster.yaml")  # atomic: the controller never reads half a file

    async def _start_standins(self) -> None:
        wanted = {(s.pod, s.kind, s.address, s.port): s for s in self.cluster.standins}
        running = {(pod, st.kind, st.address, st.port) for pod, sts in self.standins.items() for st in sts}
        for key in running - set(wanted):
            for standin in self.standins.pop(key[0], []):
                await standin.kill()
        for key, spec in wanted.items():
            if key in running:
                continue
            try:
                standin = await StandIn(spec.kind, spec.hostname, spec.address, spec.port, spec.name).start()
            except OSError as exc:
                raise LocalModeError(_standin_error(spec, exc)) from None
            self.standins.setdefault(spec.pod, []).append(standin)

    async def apply(self, objects: list[dict], timeout: float = 30.0) -> None:
        """Create or replace objects (matched by kind/namespace/name), like ``kubectl apply``."""
        def key(o: dict) -> tuple:
            meta = o.get("metadata") or {}
            return o.get("kind"), meta.get("namespace", "default"), meta.get("name")

        replaced = {key(o) for o in objects}
        kept = [(m, origin) for m, origin in zip(self.manifests, self.manifest_origins) if key(m) not in replaced]
        manifests = [m for m, _ in kept] + list(objects)
        if self.high_ports is not local_cluster.NO_REMAP and not local_cluster.high_ports_fit(self.high_ports,
                                                                                               objects):
            # the offset was chosen for the manifests at start; moving would change every address
            raise LocalModeError(f"these objects have ports that collide once moved up by {self.high_ports.offset} "
                                 "(high ports, chosen at start): restart local mode with them in PATH")
        self.manifests = manifests
        self.manifest_origins = [origin for _, origin in kept] + [""] * len(objects)
        await self._changed(timeout)

    async def delete(self, kind: str, namespace: str, name: str, timeout: float = 30.0) -> None:
        kept = [(m, origin) for m, origin in zip(self.manifests, self.manifest_origins) if not (
            m.get("kind") == kind and (m.get("metadata") or {}).get("namespace", "default") == namespace
            and (m.get("metadata") or {}).get("name") == name)]
        self.manifests = [m for m, _ in kept]
        self.manifest_origins = [origin for _, origin in kept]
        await self._changed(timeout)

    async def _changed(self, timeout: float) -> None:
        before = (_http_json(self.api_url + wire.CONFIG_PATH + "?wait=0") or {}).get("version")
        self._write_state()
        await self._start_standins()
        deadline = time.monotonic() + timeout
        await self._poll(lambda: (_http_json(self.api_url + wire.CONFIG_PATH + "?wait=0") or {}).get("version")
                         != before, deadline, "controller published the change")
        await self.wait_for_config_applied(deadline)

    async def kill_pod(self, namespace: str, name: str) -> None:
        """Crash a pod's stand-in without telling the cluster (endpoints stay until noticed)."""
        for standin in self.standins.get(f"{namespace}/{name}", []):
            await standin.kill()

    # ------------------------------------------------------------------ what to tell users

    def resolve(self, name: str, qtype: str = "A") -> list[str]:
        """Ask the mesh DNS, as a client pod's resolver would."""
        from dnslib import DNSRecord

        query = DNSRecord.question(name, qtype)
        try:
            reply = DNSRecord.parse(query.send("127.0.0.1", self.dns_port, timeout=2))
        except (OSError, socket.timeout):
            return []
        return [str(rr.rdata) for rr in reply.rr]

    def services(self) -> list[ServiceAccess]:
        """Every Service of the manifests: where it answers, or why the controller left it out."""
        topology = _http_json(self.api_url + wire.TOPOLOGY_PATH) or {}
        meshed = {f"{t['namespace']}/{t['name']}": t for t in topology.get("services") or []}
        excluded = {e["service"]: e.get("reason", "") for e in topology.get("excluded_services") or []}
        targets = {f"{t['namespace']}/{t['name']}": t for t in topology.get("traffic_targets") or []}
        object_errors: dict[str, list[dict]] = {}
        for error in topology.get("errors") or []:
            if isinstance(error, dict) and error.get("kind") == "Service":
                object_errors.setdefault(f"{error.get('namespace')}/{error.get('name')}", []).append(
                    {"field": error.get("field") or "", "message": error.get("message") or ""})
        declared = {(o["metadata"].get("namespace", "default"), o["metadata"].get("name")): o
                    for o in self.manifests if o.get("kind") == "Service" and isinstance(o.get("metadata"), dict)}
        out = []
        for obj in self.cluster.objects:
            if obj.get("kind") != "Service":
                continue
            meta = obj["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            original = ((declared.get((meta["namespace"], meta["name"])) or {}).get("spec") or {}).get("ports") or []
            ports = []
            for index, p in enumerate(obj["spec"].get("ports") or []):
                service_port = original[index].get("port") if index < len(original) else p.get("port")
                ports.append({"name": p.get("name", ""), "port": p.get("port"), "service_port": service_port,
                              "protocol": p.get("protocol", "TCP")})
            access = ServiceAccess(meta["namespace"], meta["name"], None,
                                   [f"{meta['name']}.{meta['namespace']}.{d}" for d in self.domains], None, ports,
                                   ready_endpoints=self._ready_endpoints(meta["namespace"], meta["name"]),
                                   errors=object_errors.get(key, []))
            answers = self.resolve(access.host)
            access.address = answers[0] if answers else None
            # what the controller says about this Service: "field: message; ..." (None when it says nothing)
            said = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"]
                             for e in access.errors) or None
            if key in meshed:
                access.traffic_type = meshed[key].get("traffic_type")
                if access.address is None and not any(p.get("mesh_port") is not None
                                                      for p in meshed[key].get("ports") or []):
                    # kept in the topology with no meshed port (no UDP port for traffic type udp, no valid
                    # port): no shadow Service, no mesh name; the controller's errors say why
                    access.excluded = said
                if meshed[key].get("traffic_split"):
                    access.ready_endpoints = None  # a split root answers from its backends' pods
                if self.acl:
                    access.allowed_sources = self._allowed_sources(meshed[key], targets)
            elif meta["namespace"] == self.mesh_namespace:
                access.excluded = "mesh namespace, ignored"
            elif key in excluded:
                access.excluded = excluded[key]
            elif meta["namespace"] in ALWAYS_IGNORED_NAMESPACES:
                access.excluded = f"namespace {meta['namespace']} is never meshed"
            elif self.declared and meta["namespace"] in self.declared.ignore_namespaces:
                access.excluded = f"namespace {meta['namespace']} is ignored (--ignore-namespaces)"
            elif self.declared and self.declared.watch_namespaces \
                    and meta["namespace"] not in self.declared.watch_namespaces:
                access.excluded = f"namespace {meta['namespace']} is not watched (--watch-namespaces)"
            else:
                access.excluded = said or ("not in the controller's topology" if topology
                                           else "the controller did not answer")
            if access.excluded:
                access.address = None
            out.append(access)
        return out

    def _ready_endpoints(self, namespace: str, name: str) -> int:
        """Ready addresses with a usable port in the Service's EndpointSlices (synthesized or given)."""
        addresses = set()
        for obj in self.cluster.objects:
            meta = obj.get("metadata") or {}
            if obj.get("kind") != "EndpointSlice" or meta.get("namespace") != namespace \
                    or (meta.get("labels") or {}).get("kubernetes.io/service-name") != name or not obj.get("ports"):
                continue
            for endpoint in obj.get("endpoints") or []:
                if isinstance(endpoint, dict) and (endpoint.get("conditions") or {}).get("ready") is not False:
                    addresses.update(endpoint.get("addresses") or [])
        return len(addresses)

    def _allowed_sources(self, service: dict, targets: dict[str, dict]) -> list[dict]:
        """Pods whose source address the Service's TrafficTargets let in (ACL mode)."""
        kind = service.get("traffic_type")
        pods: dict[str, str] = {}
        for name in service.get("traffic_targets") or []:
            target = targets.get(name) or {}
            covers = target.get("http_matches") if kind == "http" else target.get(kind)
            if not covers:
                continue
            for source in target.get("sources") or []:
                namespace, _, account = source.partition("/")
                for pod in self.cluster.pods_of(namespace, account):
                    pods[f"{namespace}/{pod['metadata']['name']}"] = pod["status"]["podIP"]
        return [{"pod": pod, "address": address} for pod, address in sorted(pods.items())]

    def endpoints(self, services: list[ServiceAccess] | None = None) -> dict:
        """What ``--endpoints FILE`` writes: everything a script needs to reach the local mesh."""
        return {
            "dns": {"address": "127.0.0.1", "port": self.dns_port},
            "controller_api": self.api_url,
            "proxy_admin": self.admin_url,
            "acl": {"enabled": self.acl, "why": self.acl_reason},
            "high_ports": ({"offset": self.high_ports.offset, "below": self.high_ports.below,
                            "remapped": {str(k): v for k, v in sorted(self.cluster.remapped.items())}}
                           if self.high_ports is not local_cluster.NO_REMAP else None),
            "services": [vars(s) for s in (self.services() if services is None else services)],
            "pods": [{"namespace": p["metadata"]["namespace"], "name": p["metadata"]["name"],
                      "address": p["status"]["podIP"],
                      "service_account": p["spec"].get("serviceAccountName", "default")} for p in self.cluster.pods],
        }


def _standin_error(spec: local_cluster.StandInSpec, exc: OSError) -> str:
    where = f"pod {spec.pod}: cannot serve {spec.address}:{spec.port}/{'udp' if spec.kind == 'udp' else 'tcp'}"
    if isinstance(exc, PermissionError):
        return f"{where}: permission denied; ports below {privileged_port_limit()} need CAP_NET_BIND_SERVICE: " \
               "run with --high-ports"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: address already in use; another 'lightmesh local' or another program holds it: stop it first"
    return f"{where}: {exc.strerror or exc}"


def _raise_listener_errors(rawdata: dict | None) -> None:
    errors = sorted({message for worker in (rawdata or {}).get("workers") or []
                     for message in (worker.get("listener_errors") or {}).values()})
    if not errors:
        return
    message = errors[0]
    if "ermission denied" in message:
        remedy = f"ports below {privileged_port_limit()} need CAP_NET_BIND_SERVICE: run with --high-ports"
    elif "in use" in message:
        remedy = "another 'lightmesh local' or another program holds that address: stop it first"
    else:
        remedy = ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise LocalModeError(f"the proxy {message}{more}" + (f"; {remedy}" if remedy else ""))


def _terminate(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _http_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _hash_of(rawdata: dict) -> str | None:
    """The content hash of the config the proxy has in force (``/api/rawdata``)."""
    config = rawdata.get("config") or {}
    return config.get("hash") if isinstance(config, dict) else rawdata.get("hash")


def _listener_keys(config: dict) -> set[str]:
    """The listeners a proxy config declares, as the proxy's workers report them open
    (``"tcp 127.1.0.3:8080"``: :func:`lightmesh.proxy.runtime.describe_key`)."""
    import ipaddress

    from lightmesh.proxy.runtime import describe_key

    def key(kind: str, listener: dict) -> str:
        address = listener.get("address", "0.0.0.0")
        with contextlib.suppress(ValueError):
            address = str(ipaddress.ip_address(address))  # as the proxy's config model spells it
        return describe_key((kind, address, listener["port"]))

    keys = {key("http", e) for e in (config.get("http") or {}).get("entry_points") or []}
    return keys | {key(kind, r) for kind in ("tcp", "udp") for r in config.get(kind) or []}
