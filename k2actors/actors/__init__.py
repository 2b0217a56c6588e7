"""The actor shell. A trade enters in connection.py, is shaped in normaliser.py and leaves
in producer.py; coordinator.py supervises them all and metrics.py serves what they report."""

import logging
import os
from datetime import timedelta

from thespian.actors import Actor, ActorExitRequest, PoisonMessage

import k2actors.thespian_transport  # noqa: F401  (patches the transport in every actor process)
from k2actors.messages import Heartbeat

TICK = "tick"


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def note_poison(log: logging.Logger, metrics, poison: PoisonMessage) -> None:
    """A message came back because its receiver failed on it twice: it is never retried again."""
    kind = type(poison.poisonMessage).__name__
    log.error("a %s failed twice in its receiver and came back: %s", kind, str(poison.details)[:300])
    metrics.inc("k2_poison_messages_total", kind)


def report_alive(actor: Actor, coordinator, parent_pid: int) -> None:
    """A child's heartbeat; a child whose coordinator died (SIGKILL) exits instead, so that
    a restarted service never finds the last one's actors still streaming."""
    if os.getppid() != parent_pid:
        logging.getLogger("k2actors.supervision").error("%s lost its coordinator; exiting", type(actor).__name__)
        actor.send(actor.myAddress, ActorExitRequest())
    else:
        actor.send(coordinator, Heartbeat(os.getpid()))
