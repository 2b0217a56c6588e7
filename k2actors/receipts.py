"""Receipts: how many frames each connection received, kept where a killed process leaves it.

A connection keeps its frames until Kafka has what came of them, so a producer or Normaliser
that dies loses nothing. When the whole service dies at once (SIGKILL, a container killed)
the frames not yet in Kafka die with it, and the venue cannot send them again. To say how
many, each connection has a receipt: a small file, memory-mapped, in `raw.receipts_dir`. The
reader thread writes the number of each frame into it as the frame arrives (a store to
memory: the kernel keeps the page when the process dies), and the connection actor the last
number Kafka has. While its connection's process lives it holds a lock on the file.

A receipt is removed by its connection once every frame it counts is in Kafka, or by the
service after a stop that delivered everything (the connections had handed on every frame,
and said so in their receipts, before the last confirmations could reach them). One left
behind with its lock free belongs to a connection whose process ended first: the producer
settles it (k2actors.core.raw.frames_lost), counting the frames after the last one Kafka
holds as lost, and removes it.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from k2actors import processes
from k2actors.config import ConfigError, RawConfig

# The counters at the head of the file: the last frame received, the last frame Kafka has, and
# 1 once the service is stopping and the connection has handed every frame on.
_COUNTERS = struct.Struct("<QQQ")
_COUNTER = struct.Struct("<Q")
_SUFFIX = ".receipt"


def make_directory(raw: RawConfig) -> None:
    """raw.receipts_dir, made if need be: a service that cannot keep receipts does not start."""
    if not raw.enabled:
        return
    try:
        os.makedirs(raw.receipts_dir, exist_ok=True)
        probe = Path(raw.receipts_dir) / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError("raw.receipts_dir", raw.receipts_dir,
                          f"a directory this user can create and write ({exc.strerror})") from None


class Receipt:
    """A live connection's receipt: written by its reader thread (`received`) and its actor
    (`confirmed`), each to a counter of its own."""

    def __init__(self, directory: str, venue: str, endpoint: str, conn_id: str) -> None:
        self.path = Path(directory) / f"{conn_id}{_SUFFIX}"
        identity = json.dumps({"venue": venue, "endpoint": endpoint, "conn_id": conn_id,
                               "service_pid": processes.service_pid()}).encode()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.write(self._fd, _COUNTERS.pack(0, 0, 0) + identity)
        self._counters = mmap.mmap(self._fd, _COUNTERS.size)

    def received(self, conn_msg_seq: int) -> None:
        _COUNTER.pack_into(self._counters, 0, conn_msg_seq)

    def confirmed(self, conn_msg_seq: int) -> None:
        _COUNTER.pack_into(self._counters, _COUNTER.size, conn_msg_seq)

    def handed_on(self) -> None:
        """The service is stopping and every frame counted went on to the Normaliser."""
        _COUNTER.pack_into(self._counters, 2 * _COUNTER.size, 1)

    @property
    def settled(self) -> bool:
        """Every frame received is in Kafka."""
        received, confirmed, _ = _COUNTERS.unpack_from(self._counters)
        return confirmed >= received

    def close(self) -> None:
        """The connection is done with it: removed if settled, else left (unlocked) for the
        producer to settle against what Kafka holds."""
        if self.settled:
            self.path.unlink(missing_ok=True)
        self._counters.close()
        os.close(self._fd)


@dataclass(frozen=True)
class LeftReceipt:
    """A receipt whose connection's process has ended, with what it counted."""

    path: Path
    venue: str
    endpoint: str
    conn_id: str
    received: int
    confirmed: int
    service_pid: int
    handed_on: bool  # in a stop


def left_behind(directory: str) -> Iterator[LeftReceipt]:
    """The receipts in `directory` whose connection's process has ended, except those of
    another service still running (it settles its own: it knows what it handed to Kafka)."""
    own = processes.service_pid()
    for path in sorted(Path(directory).glob(f"*{_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # removed meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # its connection lives
                continue
            content = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            received, confirmed, handed_on = _COUNTERS.unpack_from(content)
            identity = json.loads(content[_COUNTERS.size:])
            left = LeftReceipt(path, str(identity["venue"]), str(identity["endpoint"]), str(identity["conn_id"]), received,
                               confirmed, int(identity["service_pid"]), bool(handed_on))
        except (struct.error, ValueError, KeyError, TypeError):
            # Its process died between creating and writing it, or it is no receipt: there is
            # nothing to count from it.
            path.unlink(missing_ok=True)
            continue
        if left.service_pid == own or not processes.exists(left.service_pid):
            yield left


def remove_handed_on(raw: RawConfig) -> None:
    """After a stop that delivered everything: the receipts of this service's connections
    that handed every frame on are settled (a receipt left by a connection killed earlier is
    not: its frames may never have gone on)."""
    if raw.enabled:
        for receipt in left_behind(raw.receipts_dir):
            if receipt.handed_on and receipt.service_pid == processes.service_pid():
                receipt.path.unlink(missing_ok=True)


def claim(receipt: LeftReceipt) -> bool:
    """Take a left receipt for settling, once: of two services sharing the directory, only
    one removes it."""
    try:
        receipt.path.unlink()
    except FileNotFoundError:
        return False
    return True
