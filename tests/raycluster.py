"""A real Ray cluster on this machine for the tests, kept off the network.

Each node is its own `ray start --block` process (a head, then workers that join it), so the work crosses
process boundaries as it would between machines. Ray binds to all interfaces and advertises the machine's
outward address by default; here every node, and every driver (`Cluster.command`), runs inside a network
namespace that has only loopback, made and removed by the cluster itself: no test sends traffic beyond
the machine. The namespace has its own ports, so the head's default port is free.

Ray's processes ignore SIGTERM for a while, and `ray stop` would stop every Ray process on the host, so a
node is stopped by pid: each process of its session (its workers have process groups of their own) gets
SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
PORT = 6379
GRACE = 5.0  # seconds between SIGTERM and SIGKILL
START_TIMEOUT = 90.0


def unavailable() -> str | None:
    """Why no cluster can be made here (the reason to skip), or None."""
    if os.geteuid() != 0:
        return "the Ray cluster tests need root, for a network namespace (ip netns)"
    if shutil.which("ip") is None:
        return "the Ray cluster tests need iproute2's `ip` (ip netns)"
    if not RAY.exists():
        return "Ray is not installed: pip install -e '.[ray]'"
    probe = f"imgsearch-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"ip netns is unavailable here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


class Node:
    """One `ray start --block` process and everything it started (one session)."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path):
        self.process = process
        self.log = log

    def pids(self) -> list[int]:
        """The node's live processes (zombies excluded: they wait only for their parent)."""
        return [pid for pid in _pids() if _stat(pid)[1:] == (self.process.pid, True)]

    def raylet(self) -> int:
        found = [pid for pid in self.pids() if _stat(pid)[0] == "raylet"]
        if not found:
            raise RuntimeError(f"no raylet in this node's processes ({self.log})")
        return found[0]

    def stop(self) -> None:
        """SIGTERM to every process of the node, a grace period, then SIGKILL to what is left."""
        _signal(self.pids(), signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal(self.pids(), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(GRACE)


class Cluster:
    """A head and worker nodes in a loopback-only network namespace. Use as a context manager."""

    def __init__(self) -> None:
        self.namespace = f"imgsearch-ray-{os.getpid()}"
        # Short: Ray's socket paths live under it and must fit in 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="isray-", dir="/tmp"))
        self.address = f"127.0.0.1:{PORT}"
        self.nodes: list[Node] = []
        self.env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}

    def __enter__(self) -> Cluster:
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        try:
            subprocess.run(["ip", "-n", self.namespace, "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: str) -> list[str]:
        """A command line that runs inside the cluster's namespace (a driver must, to reach the head)."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def add_node(self, cpus: int) -> Node:
        """Start a node (the first is the head) and wait until it has joined."""
        common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--num-gpus", "0"]
        common += ["--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
        if self.nodes:
            role = ["--address", self.address]
        else:
            role = ["--head", "--port", str(PORT), "--include-dashboard", "false", "--temp-dir", str(self.temp_dir)]
        log = self.temp_dir / f"node-{len(self.nodes)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.command(str(RAY), "start", *role, *common),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # the node's session: how its processes are found to stop them
            )
        node = Node(process, log)
        self.nodes.append(node)
        self._wait_started(node)
        return node

    def _wait_started(self, node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while b"Ray runtime started" not in node.log.read_bytes():
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a Ray node did not start:\n{node.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def kill(self, node: Node) -> None:
        """Kill a node as a crash would: its raylet, at once (the node's `ray start` then ends the rest)."""
        os.kill(node.raylet(), signal.SIGKILL)

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> tuple[str, int, bool]:
    """(command name, session id, alive) of a process; ("", 0, False) if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0, False
    name = text[text.index("(") + 1 : text.rindex(")")]
    state, _ppid, _pgrp, session = text[text.rindex(")") + 2 :].split()[:4]
    return name, int(session), state not in "ZX"


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
