"""The service's processes, read from /proc: Thespian runs every actor in a process of its own."""

from __future__ import annotations

import os


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident pages) for every process now running."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        table[int(entry)] = (int(fields[1]), int(fields[21]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]]) -> set[int]:
    found, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def trees(roots: tuple[int, ...], table: dict[int, tuple[int, int]]) -> set[int]:
    """The roots and all their descendants. A service needs two roots: Thespian's admin
    process detaches itself from the process that started it."""
    found = set(roots)
    for root in roots:
        found |= descendants(root, table)
    return found


def tree_resident_bytes(*roots: int) -> int:
    """Resident memory of the processes under `roots`: the whole service, every actor."""
    table = process_table()
    return sum(table[pid][1] for pid in trees(roots, table) if pid in table) * os.sysconf("SC_PAGE_SIZE")


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def tree_cpu_seconds(*roots: int) -> float:
    """User and system CPU time of the processes under `roots` now running."""
    total_ticks = 0
    for pid in trees(roots, process_table()):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / os.sysconf("SC_CLK_TCK")
