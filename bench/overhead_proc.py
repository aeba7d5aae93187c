"""Processes under test: start them pinned to a CPU, wait for the first good reply, read /proc.

CPU time and RSS are summed over the process and all its descendants, because a server may
fork workers or helpers; dead children still count through their parent's cutime/cstime.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Server", "StartFailed", "start_server", "stop_server", "cpu_seconds", "descendants", "rss_bytes",
           "post_ok"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartFailed(RuntimeError):
    """The server exited or never answered; the message ends with the tail of its log."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    startup_s: float


def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: split after the last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError):
                continue  # exited while we looked
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(root: int) -> float:
    """utime + stime (+ reaped children's) of `root` and its live descendants, in seconds."""
    ticks = 0
    for pid in descendants(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        # Fields 14-17 of /proc/PID/stat (utime, stime, cutime, cstime); fields[0] is field 3.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLK_TCK


def rss_bytes(root: int) -> int:
    """VmRSS summed over `root` and its live descendants."""
    total = 0
    for pid in descendants(root):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:"))
    return total


def post_ok(port: int, path: str, body: str, api_key: str, timeout: float = 5.0) -> bool:
    """Whether one POST gets a 200 with a non-empty body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status == 200 and len(response.read()) > 0
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(name: str, command: list[str], port: int, probe: tuple[str, str, str],
                 log: Path, env: dict[str, str], timeout_s: float) -> Server:
    """Spawn `command` in its own session; start-up ends at the first good reply to `probe`."""
    path, body, api_key = probe
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, stdin=subprocess.DEVNULL)
    while not post_ok(port, path, body, api_key, timeout=min(timeout_s, 30.0)):
        if process.poll() is not None:
            raise StartFailed(f"{name} exited with {process.returncode}:\n{_log_tail(log)}")
        if time.monotonic() - started > timeout_s:
            _kill_group(process)
            raise StartFailed(f"{name} gave no good reply in {timeout_s:.0f} s:\n{_log_tail(log)}")
        time.sleep(0.02)
    return Server(name, process, port, log, time.monotonic() - started)


def _kill_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    # The group is ours (start_new_session); SIGKILL at the end takes any straggling child.
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group (SIGKILL after 10 s)."""
    _kill_group(server.process)
