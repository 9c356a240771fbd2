"""What a local cluster leaves on this machine, written down before it is made, so that the next cluster
removes what a dead one left, however it died (SIGKILL of the test run included), and never touches
what a live one holds.

A cluster's pods use the subnet 127.255.N.0/24 and the bridge `rmsgN`, whose host-side veths are
`rmsgNv1`, `rmsgNv2`, ... A cluster claims N by creating STATE_DIR/rmsgN.run, which its process keeps
locked (flock) for its whole life. The kernel drops the lock when that process dies, however it
dies: a record whose lock can be taken is a dead cluster's, whatever became of its pid since. The
record holds one line per thing made, written before the thing exists:

    owner PID START        the cluster's process (START: its start time; for people reading it)
    path DIR               a directory of the run (its own, the control plane's)
    group PGID START       a process group it started in the host's namespaces (START: the leader's)
    ungroup PGID           ... that it has since stopped

What a dead cluster leaves, and how the next one finds it:

- its pods' processes. PR_SET_PDEATHSIG kills most of them with the harness, but not the children
  they forked nor anything that left its process group. Every process of a pod stays in the pod's
  network namespace, which holds an address of the cluster's subnet: found by that.
- processes in the host's network namespace (the operator, kwok, the scheduler, the control plane):
  by their recorded process group, or a recorded directory on their command line.
- the bridge and the veths (a veth lives as long as its pod's network namespace, that is as long as
  one process of the pod): deleted once the processes are gone; the subnet's routes go with them.
- the directories: removed (the pods' mounts were in the pods' own mount namespaces, gone with them).

Records of the former format (STATE_DIR/rmsgN.pid: the owner's pid, then directories) are cleaned up
the same way once their pid is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/rmsg-local")
NUMBERS = range(1, 255)  # N of 127.255.N.0/24
KILL_TIMEOUT = 15.0


class RunRecordError(RuntimeError):
    pass


def bridge_name(number: int) -> str:
    return f"rmsg{number}"


def subnet_of(number: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"127.255.{number}.0/24")


def veth_name(bridge: str, counter: int) -> str:
    """The host side of a pod's veth pair: `rmsgNvK` (at most 15 characters, the kernel's limit)."""
    return f"{bridge[:8]}v{counter}"[:15]


def bridge_links(bridge: str) -> list[str]:
    """The bridge and every veth named after it that exist now."""
    pattern = re.compile(re.escape(f"{bridge[:8]}v") + r"\d+")
    names = [p.name for p in Path("/sys/class/net").iterdir() if pattern.fullmatch(p.name)]
    if Path(f"/sys/class/net/{bridge}").exists():
        names.append(bridge)
    return sorted(names)


def process_start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot; field 22 of /proc/PID/stat), -1 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return -1


def boot_ticks() -> int:
    """Now, in clock ticks since boot (the unit of a process's start time)."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def group_is(pgid: int, started: int) -> bool:
    """Whether process group ``pgid`` is still the one whose leader started at ``started``. A leader
    that is gone leaves its number to the group while the group lives (Linux reuses no pid a group
    still carries); a leader of that number that started at another time is a later process."""
    now = process_start_time(pgid)
    return started < 0 or now < 0 or now == started


# --------------------------------------------------------------------------------------------------
# finding processes


@dataclass(frozen=True)
class Proc:
    pid: int
    pgrp: int
    netns: str  # net:[INODE]
    cmdline: str
    started: int = -1  # clock ticks since boot

    def __str__(self) -> str:
        return f"pid {self.pid} (group {self.pgrp}, {self.netns}): {self.cmdline}"


def processes() -> Iterator[Proc]:
    """Every live process but this one (zombies have no namespaces left and are skipped)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pgrp, started = int(stat[2]), int(stat[19])
            netns = os.readlink(entry / "ns" / "net")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        yield Proc(int(entry.name), pgrp, netns, cmdline, started)


_ADDRESS = re.compile(r"[|+]-- (\d+\.\d+\.\d+\.\d+)")


def netns_addresses(pid: int) -> set[ipaddress.IPv4Address]:
    """The IPv4 addresses and prefixes of the network namespace of ``pid`` (its /proc/PID/net/fib_trie)."""
    try:
        text = Path(f"/proc/{pid}/net/fib_trie").read_text()
    except OSError:
        return set()
    return {ipaddress.IPv4Address(m) for m in _ADDRESS.findall(text)}


def find_processes(*, groups: Mapping[int, int] | None = None, subnet: ipaddress.IPv4Network | None = None,
                   netns: Iterable[str] = (), markers: Sequence[str] = (),
                   netns_before: int | None = None) -> list[Proc]:
    """The live processes that belong to a run: in a network namespace of ``netns`` or one holding an
    address of ``subnet`` (its pods), in the host's network namespace and in one of ``groups``
    ({pgid: leader start time}), or with one of ``markers`` (its directories) on their command line.
    ``netns_before`` (clock ticks since boot): a process in one of ``netns`` counts only if it started
    before then; the kernel gives a freed namespace's number to the next one, maybe another cluster's
    pod."""
    groups = groups or {}
    host = os.readlink("/proc/self/ns/net")
    pod_netns = set(netns) - {host}
    in_subnet: dict[str, bool] = {}
    found = []
    for proc in processes():
        mine = (proc.netns in pod_netns and (netns_before is None or proc.started <= netns_before)) \
            or any(m in proc.cmdline for m in markers)
        if not mine and proc.netns == host:
            mine = proc.pgrp in groups and group_is(proc.pgrp, groups[proc.pgrp])
        elif not mine and subnet is not None:
            if proc.netns not in in_subnet:
                in_subnet[proc.netns] = any(a in subnet for a in netns_addresses(proc.pid))
            mine = in_subnet[proc.netns]
        if mine:
            found.append(proc)
    return found


def kill_processes(find: Callable[[], list[Proc]], timeout: float = KILL_TIMEOUT) -> list[Proc]:
    """SIGKILL what ``find`` returns until it returns nothing (a dying process may fork meanwhile)."""
    killed: dict[int, Proc] = {}
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if not found:
            return list(killed.values())
        if time.monotonic() > deadline:
            raise RunRecordError("still alive after SIGKILL:\n" + "\n".join(map(str, found)))
        for proc in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            killed.setdefault(proc.pid, proc)
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# the record of a live cluster


class RunRecord:
    """The claim of a live cluster on its subnet and bridge, and the list of what it made."""

    def __init__(self, path: Path, fd: int, number: int) -> None:
        self.path = path
        self.number = number
        self.bridge = bridge_name(number)
        self.subnet = subnet_of(number)
        self._fd: int | None = fd

    @classmethod
    def claim(cls, state_dir: Path = STATE_DIR, numbers: Iterable[int] = NUMBERS) -> RunRecord:
        """Clean up after dead clusters, then claim the first free N (no record, no bridge, no route)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        reap_dead(state_dir)
        for number in numbers:
            bridge = bridge_name(number)
            if any((state_dir / f"{bridge}{suffix}").exists() for suffix in (".run", ".pid")):
                continue
            record = cls._create(state_dir, number)
            if record is None:
                continue
            routes = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True,
                                    check=False).stdout
            if bridge_links(bridge) or f"127.255.{number}." in routes:
                # Not a local cluster's (each makes its record before its bridge): left as it is.
                log.warning("%s or the subnet %s exists without a local cluster's record; not using it",
                            bridge, record.subnet)
                record.release()
                continue
            return record
        raise RunRecordError("no free 127.255.N.0/24 subnet for the pods")

    @classmethod
    def _create(cls, state_dir: Path, number: int) -> RunRecord | None:
        """The record, created already locked with its first lines (os.link: all or nothing)."""
        path = state_dir / f"{bridge_name(number)}.run"
        tmp = state_dir / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            pid = os.getpid()
            os.write(fd, f"owner {pid} {process_start_time(pid)}\n".encode())
            os.link(tmp, path)
        except FileExistsError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path, fd, number)

    def _append(self, line: str) -> None:
        if self._fd is None:
            raise RunRecordError(f"{self.path} was released")
        os.write(self._fd, f"{line}\n".encode())  # one write of a line, at the end: appends never mix

    def add_path(self, path: Path) -> None:
        self._append(f"path {path}")

    def add_group(self, pgid: int, started: int) -> None:
        self._append(f"group {pgid} {started}")

    def drop_group(self, pgid: int) -> None:
        self._append(f"ungroup {pgid}")

    def release(self) -> None:
        """Everything it lists is gone: remove the record, then let go of the lock."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


# --------------------------------------------------------------------------------------------------
# cleaning up after dead clusters


@dataclass
class Leftovers:
    """What a dead cluster's record says it made."""

    bridge: str
    subnet: ipaddress.IPv4Network
    paths: list[Path]
    groups: dict[int, int]

    @classmethod
    def parse(cls, path: Path, text: str) -> Leftovers:
        number = int(path.stem.removeprefix("rmsg"))
        paths: list[Path] = []
        groups: dict[int, int] = {}
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "path":
                paths.append(Path(rest))
            elif kind == "group":
                pgid, started = rest.split()
                groups[int(pgid)] = int(started)
            elif kind == "ungroup":
                groups.pop(int(rest), None)
            elif path.suffix == ".pid" and kind.startswith("/"):  # the former format: directories
                paths.append(Path(kind))
        return cls(bridge_name(number), subnet_of(number), paths, groups)

    def remove(self) -> str:
        """Kill its processes, delete its links, remove its directories; what was done, in words."""
        markers = [str(p) for p in self.paths]
        killed = kill_processes(lambda: find_processes(groups=self.groups, subnet=self.subnet, markers=markers))
        links = left = bridge_links(self.bridge)
        deadline = time.monotonic() + KILL_TIMEOUT
        while left:  # the veths go by themselves with their pods' namespaces, but not at once
            if time.monotonic() > deadline:
                raise RunRecordError(f"cannot delete {', '.join(left)}")
            for name in left:
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
            time.sleep(0.05)
            left = bridge_links(self.bridge)
        removed = []
        for path in self.paths:
            # only what a run makes (tempfile.mkdtemp(prefix="rmsg-...")): a damaged record removes nothing else
            if path.parent == Path(tempfile.gettempdir()) and path.name.startswith("rmsg-") and path.exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        return (f"{len(killed)} processes killed, links deleted: {', '.join(links) or 'none'}, "
                f"directories removed: {', '.join(removed) or 'none'}")


def reap_dead(state_dir: Path = STATE_DIR) -> list[str]:
    """Clean up after every dead cluster recorded in ``state_dir``; what was done, per cluster. One that
    cannot be cleaned up entirely keeps its record (and so its subnet) for the next attempt."""
    done = []
    for path in sorted([*state_dir.glob("rmsg*.run"), *state_dir.glob("rmsg*.pid")]):
        try:
            summary = reap(path)
        except RunRecordError as exc:
            log.warning("cannot clean up after the dead local cluster of %s: %s", path.name, exc)
            continue
        if summary:
            done.append(summary)
    return done


def _owner_alive_former_format(text: str) -> bool:
    try:
        os.kill(int(text.split()[0]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def reap(path: Path) -> str | None:
    """Clean up after the cluster of ``path`` if it is dead (its lock can be taken), then remove the
    record; None when it is alive (or another cluster is cleaning up after it right now)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its owner lives, or another cluster is cleaning up after it
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None  # removed by another cleanup since it was opened, and maybe claimed again
        except FileNotFoundError:
            return None
        text = path.read_text()
        if path.suffix == ".pid" and _owner_alive_former_format(text):
            return None
        leftovers = Leftovers.parse(path, text)
        summary = f"cleaned up after the dead local cluster of {path.name}: {leftovers.remove()}"
        log.warning("%s", summary)
        path.unlink()  # while still locked: nobody claims the subnet before its leftovers are gone
        return summary
    finally:
        os.close(fd)
