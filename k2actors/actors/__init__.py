"""The actor shell. A trade enters in connection.py, is shaped in normaliser.py and leaves
in producer.py; coordinator.py supervises them all and metrics.py serves what they report."""

import logging
import os
from datetime import timedelta

import thespian.system.transport
from thespian.actors import Actor, ActorExitRequest, PoisonMessage

from k2actors.messages import Heartbeat

TICK = "tick"

# Thespian's TCP transport pauses a transmit whose ACK read finds nothing yet (EAGAIN) for its
# minimum backoff, 20 ms x 1.7 = 34 ms, and that happens to a busy actor's sends now and then:
# measured between two process actors that also answer each other, it made the hop's p99
# 34 ms instead of 2.8 ms, and it was most of the service's receive-to-ack p99. Failures that
# persist still back off as before, up to Thespian's 7.3 s, only from 1.7 ms. Every actor
# process imports this module, so the setting holds in each of them.
thespian.system.transport.MIN_BACKOFF_DELAY = timedelta(milliseconds=1)


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
