"""Nobody else can attach to the embedded Ray of a sweep, proven with real processes: while a sweep
runs, every listening socket of its processes is on loopback (read from /proc/net/tcp{,6}: nothing
is reachable from the network, and no test traffic leaves 127.0.0.0/8), and on loopback a driver
without the launch's token, or with a wrong one, is refused while one with it connects (so the
probes can tell). The token file is private (mode 600)
and the token is neither logged nor tracked. Ray's dashboard is off unless ``ray.dashboard=true``,
and then on 127.0.0.1 only."""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.sweep import REPO, SMOKE

pytestmark = pytest.mark.slow

ONE = ("backend=ray", "prior.kind=laplace", "train.batch_size=32", "evaluation.enabled=false")
LONG = ("train.epochs=500", "train.steps=5000")  # about ten minutes: the sweep is killed, not awaited
TOKEN_FILE = "ray-auth-token"
GCS_LINE = re.compile(r"sweep smoke: Ray local at (\S+):(\d+), ")
PROBE = """
import sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False, logging_level="ERROR")
print("CONNECTED", flush=True)
ray.shutdown()
"""


def _wait_for(path: Path, pattern: re.Pattern, proc: subprocess.Popen, timeout: float = 300.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if m := pattern.search(text):
            return m
        assert proc.poll() is None, f"the sweep ended early ({proc.returncode}):\n{text}"
        time.sleep(0.5)
    raise AssertionError(f"{pattern.pattern!r} not in {path} after {timeout} s")


def _wait_for_trial_step(sweep_dir: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("step 4 ·" in f.read_text(errors="replace") for f in sweep_dir.glob("*/train.log")):
            return
        assert proc.poll() is None, f"the sweep ended early ({proc.returncode})"
        time.sleep(0.5)
    raise AssertionError(f"no trial of {sweep_dir} trained after {timeout} s")


def _marked_pids(marker: str) -> list[int]:
    needle = f"RGFLOW_TEST_MARKER={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _tcp_address(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp{,6} holds the address as 32-bit words in host (little-endian) byte order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def listeners(marker: str) -> dict[tuple[str, int], str]:
    """(address, port) → process name of every listening TCP socket of the test's processes."""
    inodes: dict[str, str] = {}
    for pid in _marked_pids(marker):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = name
        except OSError:
            continue
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN
                found[_tcp_address(cols[1])] = inodes[cols[9]]
    return found


def _probe(env: dict[str, str], address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROBE, address], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _outcome(proc: subprocess.Popen, timeout: float) -> tuple[bool, str]:
    """(connected, output) of a probe; one still trying after ``timeout`` s was refused."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return False, f"(still not connected after {timeout} s)\n{out}"
    return proc.returncode == 0 and "CONNECTED" in out, out


def _stop(proc: subprocess.Popen, sweep_env) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sweep_env.kill_leftovers()


def test_the_embedded_ray_refuses_drivers_without_the_sweeps_token(sweep_env):
    sweep_dir = sweep_env.runs_dir / "smoke"
    console = sweep_env.root / "console.txt"
    proc = sweep_env.popen(SMOKE, *sweep_env.overrides(*ONE, *LONG), stdout=subprocess.DEVNULL,
                           stderr=console.open("w"))
    try:
        gcs_host, port = _wait_for(sweep_dir / "logs" / "driver.log", GCS_LINE, proc).groups()
        port = int(port)
        assert gcs_host == "127.0.0.1"  # advertised on loopback, not the host's address
        _wait_for_trial_step(sweep_dir, proc)  # the Tune worker (started by the raylet) has the token too
        token_path = sweep_dir / TOKEN_FILE
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        token = token_path.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", token)

        found = listeners(sweep_env.marker)
        names = " ".join(found.values())
        assert ("127.0.0.1", port) in found and "gcs_server" in found[("127.0.0.1", port)], found
        assert "raylet" in names, found
        assert all(ipaddress.ip_address(addr).is_loopback for addr, _ in found), found  # nothing on the network
        assert not [p for _, p in found if p == 8265] and "dashboard.py" not in names, found  # no dashboard

        clean = {k: v for k, v in sweep_env.env.items() if not k.startswith("RAY_AUTH_")}
        clean["HOME"] = str(sweep_env.root)  # no ~/.ray/auth_token of the user's
        local = {**clean, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # else Ray rewrites 127.0.0.1 to the host's IP
        right = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
        wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
        probes = {
            "loopback, RAY_AUTH_MODE unset": _probe(local, f"127.0.0.1:{port}"),
            "loopback, RAY_AUTH_MODE=disabled": _probe({**local, "RAY_AUTH_MODE": "disabled"}, f"127.0.0.1:{port}"),
            "loopback, wrong token": _probe({**local, **wrong}, f"127.0.0.1:{port}"),
            "loopback, the sweep's token": _probe({**local, **right}, f"127.0.0.1:{port}"),
        }
        outcomes = {name: _outcome(p, 45) for name, p in probes.items()}  # concurrent: 45 s in all
        for name, (connected, out) in outcomes.items():
            assert connected == (name == "loopback, the sweep's token"), f"{name}: connected={connected}\n{out[-3000:]}"
        for name in ("loopback, RAY_AUTH_MODE unset", "loopback, wrong token"):
            assert "Unauthenticated" in outcomes[name][1] or "token" in outcomes[name][1].lower(), outcomes[name][1]

        leaks = [str(f) for f in sweep_env.runs_dir.rglob("*") if f.is_file() and f.name != TOKEN_FILE
                 and f.stat().st_size < 50 * 2**20 and token.encode() in f.read_bytes()]
        assert not leaks  # driver.log, trial logs, configs, Tune state
        assert console.exists() and token not in console.read_text(errors="replace")
        runs = sweep_env.all_runs()
        assert runs
        for run in runs:
            assert token not in repr(run.data.params) and token not in repr(run.data.tags)
    finally:
        _stop(proc, sweep_env)


def test_the_dashboard_only_when_asked_and_only_on_loopback(sweep_env):
    from ray._private.utils import get_dashboard_dependency_error

    sweep_dir = sweep_env.runs_dir / "smoke"
    if get_dashboard_dependency_error() is not None:  # minimal Ray (no ray[default]): refused before anything runs
        done = sweep_env.run(SMOKE, *sweep_env.overrides(*ONE, "ray.dashboard=true"), timeout=120)
        assert done.returncode == 2 and "preflight error [dashboard]" in done.stderr, done.stderr
        assert "pip install 'ray[default]' or set ray.dashboard=false" in done.stderr
        assert not sweep_dir.exists()
        return
    proc = sweep_env.popen(SMOKE, *sweep_env.overrides(*ONE, *LONG, "ray.dashboard=true"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        _wait_for(sweep_dir / "logs" / "driver.log", GCS_LINE, proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "dashboard.py" not in " ".join(listeners(sweep_env.marker).values()):
            time.sleep(1)
        found = listeners(sweep_env.marker)
        assert [a for a, name in found.items() if "dashboard.py" in name], found
        assert all(ipaddress.ip_address(addr).is_loopback for addr, _ in found), found
    finally:
        _stop(proc, sweep_env)
