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


def tree_resident_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants: the whole service, every actor."""
    table = process_table()
    tree = descendants(root, table) | {root}
    return sum(table[pid][1] for pid in tree if pid in table) * os.sysconf("SC_PAGE_SIZE")


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
