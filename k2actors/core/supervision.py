"""The coordinator's supervision plan: which children there are, who must learn a restarted
child's new address, and which children have fallen silent.

Every child beats at least once a second while its message loop turns; one silent for
HEARTBEAT_TIMEOUT_SECONDS is hung or was killed without a ChildActorExited (SIGKILL), and
is replaced. Fed the time; answers what to restart and whom to rewire.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

HEARTBEAT_TIMEOUT_SECONDS = 10.0


class Role(Enum):
    METRICS = "metrics"
    PRODUCER = "producer"
    NORMALISER = "normaliser"
    BACKFILL = "backfill"
    MEMBERSHIP = "membership"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ConnectionRole:
    """The connection actor of one endpoint URL."""

    url: str

    def __str__(self) -> str:
        return f"connection {self.url}"


ActorRole = Role | ConnectionRole


@dataclass(frozen=True, slots=True)
class Restart:
    role: ActorRole
    reason: str  # exited, or silent (no heartbeat): the k2_actor_restarts_total label
    pid: int | None  # the process to kill first (a silent one may only be hung), if known
    silent_for: float
    rewire: tuple[ActorRole, ...]  # who talks to the new actor and must learn its address

    @property
    def kind(self) -> str:
        """The `actor` label: the role without its endpoint."""
        return "connection" if isinstance(self.role, ConnectionRole) else self.role.value


class Supervision:
    def __init__(self, urls: tuple[str, ...], backfill: bool, cluster: bool = False):
        self._connections = tuple(ConnectionRole(url) for url in urls)
        self._backfill: tuple[ActorRole, ...] = (Role.BACKFILL,) if backfill and urls else ()
        self._membership: tuple[ActorRole, ...] = (Role.MEMBERSHIP,) if cluster else ()
        self._heard: dict[ActorRole, tuple[int | None, float]] = {}  # role -> (pid, when last heard)

    @property
    def pipeline(self) -> tuple[ActorRole, ...]:
        """Every child but the metrics actor, in the order they are created and wired (the
        group is joined last: shards are taken only once there is a pipeline for them)."""
        return (Role.PRODUCER, Role.NORMALISER, *self._backfill, *self._connections, *self._membership)

    def started(self, role: ActorRole, now: float) -> None:
        self._heard[role] = (None, now)

    def heartbeat(self, role: ActorRole, pid: int, now: float) -> None:
        self._heard[role] = (pid, now)

    def pids(self) -> dict[str, int]:
        return {str(role): pid for role, (pid, _) in self._heard.items() if pid is not None}

    def exited(self, role: ActorRole) -> Restart:
        return Restart(role, "exited", None, 0.0, self._dependants(role))

    def silent(self, now: float) -> list[Restart]:
        return [
            Restart(role, "silent", pid, now - heard_at, self._dependants(role))
            for role, (pid, heard_at) in self._heard.items()
            if now - heard_at > HEARTBEAT_TIMEOUT_SECONDS
        ]

    def _dependants(self, role: ActorRole) -> tuple[ActorRole, ...]:
        if role is Role.METRICS:
            return (Role.PRODUCER, *self._backfill, Role.NORMALISER, *self._connections, *self._membership)
        if role is Role.PRODUCER:
            return (Role.NORMALISER, *self._backfill)
        if role is Role.BACKFILL:
            return (Role.NORMALISER,)
        if role is Role.NORMALISER:
            return (*self._backfill, *self._connections)
        return ()
