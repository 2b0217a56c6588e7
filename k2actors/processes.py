"""The service's processes, read from /proc: Thespian runs every actor in a process of its own."""

from __future__ import annotations

import contextlib
import os
import signal


def process_table() -> dict[int, int]:
    """pid -> parent pid, for every process now running."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        table[int(entry)] = int(fields[1])
    return table


def descendants(root: int, table: dict[int, int]) -> set[int]:
    found, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in table.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def trees(roots: tuple[int, ...], table: dict[int, int]) -> set[int]:
    """The roots and all their descendants. A service needs two roots: Thespian's admin
    process detaches itself from the process that started it."""
    found = set(roots)
    for root in roots:
        found |= descendants(root, table)
    return found


def tree_memory_bytes(*roots: int) -> int:
    """Memory of the processes under `roots`: the whole service, every actor. Proportional
    set size: actors are forked, and a page they share is counted once, split among them,
    as a container's memory limit sees it (a sum of resident sizes would count it in each)."""
    total_kib = 0
    for pid in trees(roots, process_table()):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total_kib += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration):  # ended while we looked
            continue
    return total_kib * 1024


# Set by the service process before it starts the actor system: every actor process inherits it.
SERVICE_PID_VARIABLE = "K2ACTORS_SERVICE_PID"


def service_pid() -> int:
    """The pid of the service this process belongs to (its own, outside an actor)."""
    return int(os.environ.get(SERVICE_PID_VARIABLE, "0")) or os.getpid()


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def tree_cpu_seconds(*roots: int) -> float:
    """User and system CPU time of the processes under `roots` now running."""
    return sum(cpu_seconds(pid) for pid in trees(roots, process_table()))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far; 0 for one that has ended."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuLimit:
    """A cgroup that holds the processes put in it (and their children) to a share of one
    CPU, as compose's `cpus:` does: cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`. Root only."""

    PERIOD_US = 100_000

    @staticmethod
    def _root_and_version() -> tuple[str, bool]:
        """(where cpu cgroups are made, whether it is cgroup v2)"""
        unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        return ("/sys/fs/cgroup" if unified else "/sys/fs/cgroup/cpu"), unified

    @classmethod
    def available(cls) -> bool:
        """Whether this process may make one: root, where the cpu controller is mounted."""
        return os.geteuid() == 0 and os.access(cls._root_and_version()[0], os.W_OK)

    def __init__(self, cpus: float, name: str):
        self._root, unified = self._root_and_version()
        self.path = os.path.join(self._root, name)
        os.makedirs(self.path, exist_ok=True)
        quota = int(cpus * self.PERIOD_US)
        if unified:
            self._write("cpu.max", f"{quota} {self.PERIOD_US}")
        else:
            self._write("cpu.cfs_period_us", str(self.PERIOD_US))
            self._write("cpu.cfs_quota_us", str(quota))

    def join(self) -> None:
        """Put the calling process in (its children follow): for `preexec_fn`."""
        self._write("cgroup.procs", str(os.getpid()))

    def throttled_seconds(self) -> float:
        """How long the processes were held back by the limit, in all."""
        with open(os.path.join(self.path, "cpu.stat")) as stat:
            fields = dict(line.split() for line in stat)
        return int(fields["throttled_usec"]) / 1e6 if "throttled_usec" in fields else int(fields["throttled_time"]) / 1e9

    def remove(self) -> None:
        """Move whatever is left back to the root group, and remove the group."""
        with open(os.path.join(self.path, "cgroup.procs")) as procs:
            pids = procs.read().split()
        for pid in pids:
            try:
                with open(os.path.join(self._root, "cgroup.procs"), "w") as root:
                    root.write(pid)
            except OSError:  # it ended meanwhile
                continue
        os.rmdir(self.path)

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as control:
            control.write(value)


def end_actor_system(admin: int) -> None:
    """Called in an actor whose service process was killed without a word: the actor system
    it owned must go too, or a restarted service would find this one still streaming beside
    it. Nothing there has anything left to do: every process under Thespian's admin (`admin`,
    recorded when the actor system started) is ended, then the admin, then the caller, which
    has no one left to tell."""
    kill_tree(admin)
    os._exit(1)


def kill_tree(root: int) -> None:
    """SIGKILL every process under `root`, then `root`, but the caller. Never init's: an
    unknown root (0) or init (1) is left alone."""
    if root > 1:
        for pid in [*(descendants(root, process_table()) - {os.getpid()}), root]:
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)
