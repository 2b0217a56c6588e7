"""Actors for test_poison.py. Thespian needs actor classes importable from a module."""

from thespian.actors import Actor

from k2actors.messages import BatchesDelivered, RecordBatch, SequenceQuery, SequenceState


class RecordRefusingProducer(Actor):
    """Stands in for the producer: fails on every batch that holds records, keeps the rest."""

    def __init__(self):
        super().__init__()
        self.dead_letters = []

    def receiveMessage(self, message, sender):
        if isinstance(message, SequenceQuery):
            self.send(sender, SequenceState({}))
        elif isinstance(message, RecordBatch):
            if message.records:
                raise RuntimeError("this producer takes no records")
            self.dead_letters.extend((letter.reason, letter.raw) for letter in message.dead_letters)
            self.send(sender, BatchesDelivered((message.seq,)))
        elif message == "dead letters":
            self.send(sender, list(self.dead_letters))


class Sink(Actor):
    def receiveMessage(self, message, sender):
        pass
