"""What every supervised actor shares: its setup, taken once; a periodic tick; metric deltas
flushed to the MetricsActor; heartbeats to the coordinator; poison messages noted.

Messages are dispatched on their type (`receiveMsg_<Type>`). A message other than the setup
that arrives before it (delivery order between actors is not guaranteed) is held and handled
once the setup has come.

Heartbeats ride on the message loop itself: whenever the loop handles a message and a second
has passed since the last beat, one goes to the coordinator first. A busy actor therefore
beats between its data messages, never behind them, and only an actor whose loop is stuck
(hung in a handler, stopped, killed) falls silent.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar, cast

from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ActorTypeDispatcher,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
)

from k2actors import processes
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import Heartbeat

TICK = "tick"
HEARTBEAT_SECONDS = 1.0
# Set by the service process before it starts the actor system, and by the coordinator (for
# Thespian's admin) before it creates its children: every actor process inherits both.
SERVICE_PID_VARIABLE = "K2ACTORS_SERVICE_PID"
ADMIN_PID_VARIABLE = "K2ACTORS_ADMIN_PID"

S = TypeVar("S")
M = TypeVar("M")
log = logging.getLogger("k2actors.supervision")


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class Supervised(ActorTypeDispatcher, Generic[S]):
    """Subclasses name their setup message type in SETUP and their tick in TICK_SECONDS."""

    SETUP: ClassVar[type]
    TICK_SECONDS: ClassVar[float] = 1.0
    UNHELD: ClassVar[tuple[type, ...]] = ()  # data messages handled even before ready()

    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._setup: S | None = None
        self._coordinator: ActorAddress | None = None
        self._held: list[tuple[Any, ActorAddress]] = []
        self._beat_at = 0.0
        self.metrics = MetricBuffer()

    @property
    def setup(self) -> S:
        if self._setup is None:  # the shell holds every message until the setup has come
            raise RuntimeError(f"{type(self).__name__} used before its setup")
        return self._setup

    @property
    def coordinator(self) -> ActorAddress:
        if self._coordinator is None:
            raise RuntimeError(f"{type(self).__name__} has no coordinator yet")
        return self._coordinator

    def receiveMessage(self, message: Any, sender: ActorAddress) -> ThespianWatch | None:
        self._beat()
        if isinstance(message, self.SETUP):
            previous, self._setup, self._coordinator = self._setup, cast(S, message), sender
            self.configure(previous)
            if previous is None:
                self.wakeupAfter(seconds(self.TICK_SECONDS), TICK)
            self.release_held()
        elif self.ready() or isinstance(message, (WakeupMessage, ActorExitRequest, PoisonMessage, *self.UNHELD)):
            super().receiveMessage(message, sender)
        else:
            self._held.append((message, sender))
        return self.watched()

    def held(self, kind: type[M]) -> list[M]:
        """The messages of this type held until ready()."""
        return [message for message, _ in self._held if isinstance(message, kind)]

    def release_held(self) -> None:
        if self.ready():
            held, self._held = self._held, []
            for message, sender in held:
                super().receiveMessage(message, sender)

    # --- what subclasses fill in ---

    def configure(self, previous: S | None) -> None:
        """The setup arrived (`previous` is the one before: the coordinator rewired this actor)."""

    def ready(self) -> bool:
        """Whether data messages can be handled now; until then they are held."""
        return self._setup is not None

    def on_tick(self, now: float) -> None:
        """Every TICK_SECONDS."""

    def on_poison(self, message: Any, detail: str) -> None:
        """A message this actor sent came back: its receiver failed on it twice."""

    def on_exit(self) -> None:
        """The actor is being stopped: close what it opened."""

    def watched(self) -> ThespianWatch | None:
        """File descriptors that wake this actor, besides its mailbox."""
        return None

    # --- the shared shell ---

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: ActorAddress) -> None:
        if message.payload == TICK:
            self.on_tick(time.monotonic())
            self.flush_metrics()
            self.wakeupAfter(seconds(self.TICK_SECONDS), TICK)
        else:
            self.on_wakeup(message.payload)

    def on_wakeup(self, payload: Any) -> None:
        """A wakeup of the subclass's own (not the tick)."""

    def receiveMsg_PoisonMessage(self, poison: PoisonMessage, sender: ActorAddress) -> None:
        kind = type(poison.poisonMessage).__name__
        log.error("a %s failed twice in its receiver and came back: %s", kind, str(poison.details)[:300])
        self.metrics.inc("k2_poison_messages_total", kind)
        self.on_poison(poison.poisonMessage, str(poison.details)[:200])
        self.flush_metrics()

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: ActorAddress) -> None:
        self.on_exit()

    def flush_metrics(self) -> None:
        deltas = self.metrics.take()
        if deltas and self._setup is not None:
            self.send(self.metrics_address(), deltas)

    def metrics_address(self) -> ActorAddress:
        """Where metric deltas go (each setup names the MetricsActor)."""
        raise NotImplementedError

    def _beat(self) -> None:
        """A heartbeat at most once a second; a child whose actor system or service process is
        gone (SIGKILL, a shutdown that did not finish) exits instead, so that a restarted
        service never finds the last one's actors streaming."""
        now = time.monotonic()
        if self._coordinator is None or now - self._beat_at < HEARTBEAT_SECONDS:
            return
        self._beat_at = now
        service_pid = int(os.environ.get(SERVICE_PID_VARIABLE, "0"))
        if service_pid and not processes.exists(service_pid):  # and the coordinator did not end the rest
            log.error("%s: the service process %d is gone; shutting the actor system down", type(self).__name__, service_pid)
            processes.end_actor_system(int(os.environ.get(ADMIN_PID_VARIABLE, "0")))
        elif os.getppid() != self._parent_pid:
            log.error("%s lost its actor system; exiting", type(self).__name__)
            self.send(self.myAddress, ActorExitRequest())
        else:
            self.send(self._coordinator, Heartbeat(os.getpid()))
