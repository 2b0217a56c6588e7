"""The shared actor shell in a real actor system: heartbeats ride on the message loop, so a
busy actor working through a backlog keeps beating and is never taken for a dead one."""

import itertools
import time

import pytest
from thespian.actors import ActorSystem

from k2actors.core.supervision import HEARTBEAT_TIMEOUT_SECONDS
from k2actors.messages import Heartbeat
from k2actors.net import free_port
from tests.actors import Job, JobDone, SlowWorker, WorkerSetup

JOBS = 24
SECONDS_PER_JOB = 0.5  # the backlog takes 12 s, more than the supervision timeout


@pytest.fixture
def system():
    actors = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()})
    try:
        yield actors
    finally:
        actors.shutdown()


def test_a_busy_actor_keeps_beating_while_it_works_through_a_backlog(system):
    worker = system.createActor(SlowWorker)
    system.tell(worker, WorkerSetup(SECONDS_PER_JOB))  # the test stands where the coordinator would
    for number in range(JOBS):
        system.tell(worker, Job(number))
    beats, done = [], []
    deadline = time.monotonic() + JOBS * SECONDS_PER_JOB + 20
    while len(done) < JOBS and time.monotonic() < deadline:
        message = system.listen(1)
        if isinstance(message, Heartbeat):
            beats.append(time.monotonic())
        elif isinstance(message, JobDone):
            done.append(message.number)
    assert done == list(range(JOBS))
    assert JOBS * SECONDS_PER_JOB > HEARTBEAT_TIMEOUT_SECONDS  # the backlog alone would outlast supervision
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert len(beats) >= JOBS * SECONDS_PER_JOB / 2 and max(gaps) < 3 * SECONDS_PER_JOB + 1, gaps
