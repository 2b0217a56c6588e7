"""Actors for the tests that run real actor systems. Thespian needs actor classes importable
from a module."""

import time
from dataclasses import dataclass

from thespian.actors import Actor, ActorAddress

from k2actors.actors.shell import Recipient, Supervised
from k2actors.core.payloads import RecordBatch
from k2actors.messages import BatchesDelivered, SequenceQuery, SequenceState


@dataclass(frozen=True)
class StandInSetup:
    pass


class RecordRefusingProducer(Supervised[StandInSetup]):
    """Stands in for the producer, batches coming on its data channel as they do to the real
    one: fails on every batch that holds records, keeps the rest."""

    SETUP = StandInSetup
    TAKES_DATA = True

    def __init__(self):
        super().__init__()
        self.dead_letters = []

    def metrics_address(self) -> ActorAddress:
        return self.myAddress

    def receiveMsg_SequenceQuery(self, message: SequenceQuery, sender: ActorAddress) -> None:
        self.send(sender, SequenceState({}))

    def receiveMsg_RecordBatch(self, message: RecordBatch, sender: Recipient) -> None:
        if message.records:
            raise RuntimeError("this producer takes no records")
        self.dead_letters.extend((letter.reason, letter.raw) for letter in message.dead_letters)
        self.deliver(sender, BatchesDelivered((message.seq,)))

    def receiveMsg_str(self, message: str, sender: ActorAddress) -> None:
        if message == "dead letters":
            self.send(sender, list(self.dead_letters))


class Sink(Actor):
    def receiveMessage(self, message, sender):
        pass


@dataclass(frozen=True)
class WorkerSetup:
    seconds_per_job: float


@dataclass(frozen=True)
class Job:
    number: int


@dataclass(frozen=True)
class JobDone:
    number: int


class SlowWorker(Supervised[WorkerSetup]):
    """A supervised actor whose every job takes a while, as a CPU-starved producer's would."""

    SETUP = WorkerSetup

    def metrics_address(self) -> ActorAddress:
        return self.myAddress

    def receiveMsg_Job(self, job: Job, sender: ActorAddress) -> None:
        time.sleep(self.setup.seconds_per_job)  # busy, not hung: it finishes every job
        self.send(sender, JobDone(job.number))
