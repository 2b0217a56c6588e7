"""What every supervised actor shares: its setup, taken once; a periodic tick; metric deltas
flushed to the MetricsActor; heartbeats to the coordinator; poison messages noted.

Messages are dispatched on their type (`receiveMsg_<Type>`). A message other than the setup
that arrives before it (delivery order between actors is not guaranteed) is held and handled
once the setup has come.

The path of a trade runs on data channels (k2actors.channel) beside Thespian: `deliver`
sends on one, and what arrives on one is handled like a Thespian message, held the same way;
a message its handler fails on twice goes back to its sender as a PoisonMessage, as
Thespian would send it.

Heartbeats ride on the message loop itself: whenever the loop handles a message and a second
has passed since the last beat, one goes to the coordinator first. A busy actor therefore
beats between its data messages, never behind them, and only an actor whose loop is stuck
(hung in a handler, stopped, killed) falls silent.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar, cast

from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ActorTypeDispatcher,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

from k2actors import processes
from k2actors.channel import Channel, Inbox, inbox_name
from k2actors.core.framing import Refusal
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import ChannelReset, Heartbeat

TICK = "tick"
FLUSH = "flush"
# A channel whose socket was full is flushed again this soon, unless a message wakes the actor first.
FLUSH_RETRY = timedelta(milliseconds=2)
HEARTBEAT_SECONDS = 1.0
# Metric deltas go to the MetricsActor at most this often from the tick (the producer ticks
# ten times a second). Prometheus scrapes every few seconds.
METRICS_EVERY_SECONDS = 1.0
# Refused peers are logged once each; past this many the record starts again, so that a flood
# of connecting processes cannot grow it without bound (each refusal is counted regardless).
REFUSED_PEERS_REMEMBERED = 1024
# Set by the coordinator (for Thespian's admin) before it creates its children: every actor
# process inherits it, as it does processes.SERVICE_PID_VARIABLE.
ADMIN_PID_VARIABLE = "K2ACTORS_ADMIN_PID"
# The garbage collector's thresholds in every actor process (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 50, 100)

S = TypeVar("S")
M = TypeVar("M")
log = logging.getLogger("k2actors.supervision")

# Where a message of the trade's path goes: an actor (its data channel is opened on the first
# message), or the channel a message came on (the answer goes back on it).
Recipient: TypeAlias = ActorAddress | Channel


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class WakePipe:
    """A pipe that threads of an actor write to, to wake it: its read end is one of the
    actor's watched() descriptors."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        # Thespian may report the pipe readable twice for one wake-up (it selects again before
        # the first WatchMessage is handled): the second read must find it empty, not block
        # until the next write, or forever once the writers are gone.
        os.set_blocking(self.read_fd, False)

    def wake(self) -> None:
        os.write(self.write_fd, b"w")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.read_fd, 65536)


class Supervised(ActorTypeDispatcher, Generic[S]):
    """Subclasses name their setup message type in SETUP and their tick in TICK_SECONDS."""

    SETUP: ClassVar[type]
    TICK_SECONDS: ClassVar[float] = 1.0
    UNHELD: ClassVar[tuple[type, ...]] = ()  # data messages handled even before ready()
    TAKES_DATA: ClassVar[bool] = False  # whether other actors open data channels to this one

    def __init__(self) -> None:
        super().__init__()
        # The path of a trade makes many short-lived objects, and the collector's default pass
        # every 700 allocations cost about 5% of the actors' CPU at 500 trades/s. Collected
        # less often, and without walking what the process held at its start, which lives
        # as long as it does.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._parent_pid = os.getppid()
        self._setup: S | None = None
        self._coordinator: ActorAddress | None = None
        self._held: list[tuple[Any, Recipient]] = []
        self._beat_at = 0.0
        self._metrics_sent_at = 0.0
        self.metrics = MetricBuffer()
        self._inbox: Inbox | None = None
        self._incoming: list[Channel] = []
        self._outgoing: dict[str, Channel] = {}  # by the receiver's inbox name (an ActorAddress is no key)
        self._flush_scheduled = False
        self._refused_peers: set[tuple[int, int]] = set()  # (pid, uid) already logged

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

    def receiveMessage(self, message: Any, sender: ActorAddress) -> ThespianWatch:
        self._beat()
        if self.TAKES_DATA and self._inbox is None:
            self._inbox = Inbox(self.myAddress)
        if isinstance(message, WatchMessage):
            self._read_channels(set(message.ready))
        else:
            self._handle(message, sender)
        self._flush_channels()
        self._settle_channels()
        return ThespianWatch(self._watched_fds())

    def _handle(self, message: Any, sender: Recipient) -> None:
        if isinstance(message, self.SETUP):
            # A setup comes from the coordinator, by Thespian: the sender is its address.
            metrics = self.metrics_address() if self._setup is not None else None
            previous, self._setup, self._coordinator = self._setup, cast(S, message), cast(ActorAddress, sender)
            if metrics is not None and metrics != self.metrics_address():  # a restarted MetricsActor
                self.forget_channel(metrics)
            self.configure(previous)
            if previous is None:
                self.wakeupAfter(seconds(self.tick_seconds()), TICK)
            self.release_held()
        elif self.ready() or isinstance(message, (WakeupMessage, ActorExitRequest, PoisonMessage, *self.UNHELD)):
            super().receiveMessage(message, sender)
        else:
            self._held.append((message, sender))

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
        """Every tick_seconds()."""

    def tick_seconds(self) -> float:
        """Until the next tick."""
        return self.TICK_SECONDS

    def on_poison(self, message: Any, detail: str) -> None:
        """A message this actor sent came back: its receiver failed on it twice."""

    def on_exit(self) -> None:
        """The actor is being stopped: close what it opened."""

    def watched(self) -> list[int]:
        """File descriptors that wake this actor, besides its mailbox and its channels."""
        return []

    def on_readable(self, fds: set[int]) -> None:
        """Some of the watched() descriptors are readable."""

    def on_channel_reset(self) -> None:
        """A data channel this actor opened was reset by its receiver: what it carried and was
        not confirmed is to be accounted for as after that receiver's restart."""

    def replies_wanted(self) -> bool:
        """Whether an answer on a channel this actor opened must wake it. When not, answers
        wait in the socket and are read at its next wake-up by a watched descriptor, or at
        its next tick."""
        return True

    # --- data channels ---

    def deliver(self, to: Recipient, message: Any) -> None:
        """Send a message of the trade's path: in order with the others to the same receiver."""
        if isinstance(to, Channel):
            to.send(message)
            return
        name = inbox_name(to)
        channel = self._outgoing.get(name)
        if channel is None:
            channel = self._outgoing[name] = Channel(None, name)
        channel.send(message)

    def forget_channel(self, to: ActorAddress) -> None:
        """The receiver was replaced: what its channel still holds is not sent."""
        channel = self._outgoing.pop(inbox_name(to), None)
        if channel is not None:
            channel.close()

    def _channels(self) -> list[Channel]:
        return [*self._incoming, *self._outgoing.values()]

    def _read_channels(self, ready: set[int]) -> None:
        others = ready.difference(self._channel_fds(self._channels()))  # before reading: a closed channel has no fd
        if self._inbox is not None and self._inbox.fileno() in ready:
            self._incoming.extend(self._inbox.accept())
        for channel in self._incoming:
            if channel.fileno() in ready:
                self._read(channel)
        self._read_answers()
        if others:
            self.on_readable(others)

    def _read_answers(self) -> None:
        """What came back on the channels this actor opened: read at every wake-up by a watched
        descriptor and at every tick, whether replies_wanted() or not."""
        for channel in self._outgoing.values():
            if channel.closed:
                continue
            self._read(channel)
            if channel.closed:
                # On a stop this is expected; otherwise the coordinator, which logs the restart,
                # rewires this actor and what was never confirmed is sent again.
                log.info("%s: the data channel to %s closed: that actor ended", type(self).__name__,
                         channel.peer.lstrip("\0"), extra={"event": "channel_closed"})

    def _read(self, channel: Channel) -> None:
        for message in channel.receive():
            if isinstance(message, ChannelReset):
                self._reset(channel, message)
            else:
                self._take(message, channel)

    def _reset(self, channel: Channel, reset: ChannelReset) -> None:
        """The receiver closed the channel (a message it would not take): the next message
        to it opens a new one."""
        log.warning("%s: the data channel to %s was reset by its receiver (%s); what it carried is "
                    "accounted for as after that receiver's restart", type(self).__name__, channel.peer.lstrip("\0"),
                    reset.detail, extra={"event": "channel_reset"})
        channel.close()
        self._outgoing = {name: kept for name, kept in self._outgoing.items() if kept is not channel}
        self.on_channel_reset()

    def _settle_channels(self) -> None:
        """Refused peers logged (once each) and counted; closed incoming channels let go."""
        for channel in self._channels():
            refusal = channel.take_refusal()
            if refusal is not None:
                self._refused(channel, refusal)
        self._incoming = [channel for channel in self._incoming if not channel.closed]

    def _refused(self, channel: Channel, refusal: Refusal) -> None:
        self.metrics.inc("k2_channel_refusals_total", refusal.reason)
        peer = (channel.peer_pid, channel.peer_uid)
        if peer in self._refused_peers:
            return
        if len(self._refused_peers) >= REFUSED_PEERS_REMEMBERED:
            self._refused_peers.clear()
        self._refused_peers.add(peer)
        log.error("%s refused a data channel %s pid %d (uid %d): %s", type(self).__name__,
                  "from" if channel in self._incoming else "to", channel.peer_pid, channel.peer_uid, refusal.detail,
                  extra={"event": "channel_refused", "reason": refusal.reason, "pid": channel.peer_pid, "uid": channel.peer_uid})

    def _take(self, message: Any, channel: Channel) -> None:
        """A message from a channel, with Thespian's rule: a handler that fails on it twice
        sends it back as a PoisonMessage."""
        if isinstance(message, PoisonMessage):
            self._handle(message, channel)
            return
        detail = ""
        for _ in range(2):
            try:
                self._handle(message, channel)
                return
            except Exception as exc:  # whatever the handler raised, the message goes back
                detail = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed on a %s", type(self).__name__, type(message).__name__)
        channel.send(PoisonMessage(message, detail))

    def _flush_channels(self) -> None:
        full = False
        for channel in self._channels():
            channel.flush()
            full = full or channel.full
        # A channel not connected yet (its receiver is starting) is tried again with the next message.
        if full and not self._flush_scheduled:
            self._flush_scheduled = True
            self.wakeupAfter(FLUSH_RETRY, FLUSH)

    def _channel_fds(self, channels: list[Channel]) -> list[int]:
        fds = [fd for channel in channels if (fd := channel.fileno()) is not None]
        return fds if self._inbox is None else [self._inbox.fileno(), *fds]

    def _watched_fds(self) -> list[int]:
        return [*self._channel_fds(self._channels() if self.replies_wanted() else self._incoming), *self.watched()]

    # --- the shared shell ---

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: ActorAddress) -> None:
        if message.payload == FLUSH:
            self._flush_scheduled = False  # the flush itself follows every message
        elif message.payload == TICK:
            self._read_answers()  # an answer that wanted no wake-up still arrives within a tick
            now = time.monotonic()
            self.on_tick(now)
            if now - self._metrics_sent_at >= METRICS_EVERY_SECONDS:
                self._metrics_sent_at = now
                self.flush_metrics()
            self.wakeupAfter(seconds(self.tick_seconds()), TICK)
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
        for channel in self._channels():
            channel.close()
        if self._inbox is not None:
            self._inbox.close()

    def flush_metrics(self) -> None:
        """Deltas go on a data channel: a Thespian message each second from every actor was
        most of a quiet service's cost."""
        deltas = self.metrics.take()
        if deltas and self._setup is not None:
            self.deliver(self.metrics_address(), deltas)

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
        service_pid = int(os.environ.get(processes.SERVICE_PID_VARIABLE, "0"))
        if service_pid and not processes.exists(service_pid):  # and the coordinator did not end the rest
            log.error("%s: the service process %d is gone; shutting the actor system down", type(self).__name__, service_pid)
            processes.end_actor_system(int(os.environ.get(ADMIN_PID_VARIABLE, "0")))
        elif os.getppid() != self._parent_pid:
            log.error("%s lost its actor system; exiting", type(self).__name__)
            self.send(self.myAddress, ActorExitRequest())
        else:
            self.send(self._coordinator, Heartbeat(os.getpid()))
