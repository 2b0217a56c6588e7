"""Run the pipeline: start the actor system, wait for SIGTERM or SIGINT, stop in order."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

from thespian.actors import ActorSystem

from k2actors import processes, receipts
from k2actors.actors.coordinator import FailoverCoordinator
from k2actors.clients import exchange_tls
from k2actors.config import EXIT_CONFIG_ERROR, BinanceConfig, Config, ConfigError
from k2actors.core.binance import MAX_URL_LENGTH, quote_assets
from k2actors.core.raw import RestResponse
from k2actors.logs import logging_config
from k2actors.messages import (
    PipelineAlive,
    PipelineFailed,
    PipelineStarted,
    PipelineStopped,
    StartPipeline,
    StopPipeline,
)
from k2actors.net import free_port, new_conn_id

log = logging.getLogger("k2actors.service")

START_TIMEOUT_SECONDS = 30
EXCHANGE_INFO_TIMEOUT_SECONDS = 5
# The coordinator reports every second; this much silence means it is gone, and with it
# all supervision: exit non-zero so that the restart policy starts a fresh service.
COORDINATOR_SILENCE_SECONDS = 15
STOP_TIMEOUT_SECONDS = 12  # the whole stop stays within 15 s


def fetch_exchange_info(binance: BinanceConfig) -> tuple[dict[str, str], tuple[RestResponse, ...]]:
    """Each symbol's quote asset from every configured venue's exchangeInfo, and the answers
    themselves (kept in the raw record: the records' currencies come from them).

    Best effort: a venue that cannot be asked leaves the symbol-suffix table in charge of
    its currencies, and says so.
    """
    found: dict[str, str] = {}
    answers: list[RestResponse] = []
    venues = dict.fromkeys(endpoint.venue for endpoint in binance.endpoints) if binance.enabled else {}
    query = "?" + urllib.parse.urlencode({"symbols": json.dumps(list(binance.symbols), separators=(",", ":"))})
    if len(query) > MAX_URL_LENGTH:
        query = ""  # too long for a URL: ask for every symbol instead
    tls = exchange_tls(binance.tls_ca_file, binance.tls_verify)
    for venue in venues:
        target = f"/api/v3/exchangeInfo{query}"
        try:
            with urllib.request.urlopen(binance.rest_urls[venue] + target, timeout=EXCHANGE_INFO_TIMEOUT_SECONDS,
                                        context=tls) as response:
                body = response.read()
            received_ns = time.time_ns()
            assets = quote_assets(json.loads(body))
        except (OSError, ValueError) as exc:
            log.warning("exchangeInfo from %s unavailable (%s): quote currencies come from symbol suffixes", venue, exc)
            continue
        log.info("exchangeInfo from %s: quote assets of %d symbols", venue, len(assets))
        found.update(assets)
        answers.append(RestResponse(venue, binance.rest_urls[venue], target, new_conn_id(), received_ns, body))
    return found, tuple(answers)


class Pipeline:
    """The running actor system. `with Pipeline(config) as pipeline: pipeline.wait(stop_event)`."""

    def __init__(self, config: Config):
        self.config = config
        self._system: ActorSystem | None = None
        self._coordinator = None
        self._admin_pid = 0

    def start(self) -> Pipeline:
        # Actor processes are forked from here: they must not take a terminal's Ctrl-C, which
        # is for this process to turn into an orderly stop.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.environ[processes.SERVICE_PID_VARIABLE] = str(os.getpid())  # the actor processes inherit it
        try:
            self._system = ActorSystem(
                "multiprocTCPBase",
                {"Admin Port": free_port()},  # never join another service's actor system
                logDefs=logging_config(self.config.log),
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        self._coordinator = self._system.createActor(FailoverCoordinator)
        start = StartPipeline(self.config, *fetch_exchange_info(self.config.binance), os.getpid())
        reply = self._system.ask(self._coordinator, start, START_TIMEOUT_SECONDS)
        if isinstance(reply, PipelineFailed):
            self.close()
            raise RuntimeError(reply.reason)
        if not isinstance(reply, PipelineStarted):
            self.close()
            raise RuntimeError(f"the pipeline did not start within {START_TIMEOUT_SECONDS} s")
        self._admin_pid = reply.admin_pid
        log.info("pipeline started; metrics on port %d", reply.metrics_port, extra={"event": "service_started"})
        return self

    @property
    def system(self) -> ActorSystem:
        if self._system is None:
            raise RuntimeError("the pipeline is not running")
        return self._system

    def wait(self, stop: threading.Event) -> str | None:
        """Until `stop` is set (returns None) or the pipeline fails (returns why)."""
        heard_at = time.monotonic()
        while not stop.is_set():
            message = self.system.listen(0.5)
            if isinstance(message, PipelineFailed):
                return message.reason
            if isinstance(message, PipelineAlive):
                heard_at = time.monotonic()
            elif time.monotonic() - heard_at > COORDINATOR_SILENCE_SECONDS:
                return f"the coordinator has been silent for {COORDINATOR_SILENCE_SECONDS} s"
        return None

    def stop(self) -> PipelineStopped | None:
        """Stop reading, drain, flush: what Kafka did not acknowledge and what is missing, or
        None when the pipeline did not say within the stop timeout."""
        self.system.tell(self._coordinator, StopPipeline())
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            message = self.system.listen(max(deadline - time.monotonic(), 0.01))
            if isinstance(message, PipelineStopped):
                return message
        log.error("the pipeline did not finish draining within %d s", STOP_TIMEOUT_SECONDS)
        return None

    def close(self) -> None:
        if self._system is not None:
            self._system.shutdown()
            self._system = None
        # Thespian's shutdown can leave its admin, and an actor still waiting for a child it
        # never heard the end of (a SIGKILLed one), running idle: what it leaves is ended here.
        processes.kill_tree(self._admin_pid)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def run(config: Config, on_started: Callable[[], None] | None = None, stop: threading.Event | None = None) -> int:
    """The `start` command: exit status 0 after a clean stop, 1 when anything was lost or failed."""
    logging.config.dictConfig(logging_config(config.log))
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.set())
    if not config.binance.tls_verify:
        log.warning("binance.tls_verify is false: exchange certificates are NOT verified; "
                    "anyone on the network path can feed this service trades", extra={"event": "tls_unverified"})
    try:
        receipts.make_directory(config.raw)
    except ConfigError as exc:
        log.error("cannot start: %s", exc, extra={"event": "config_invalid"})
        return EXIT_CONFIG_ERROR
    try:
        pipeline = Pipeline(config).start()
    except RuntimeError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        if on_started:
            on_started()
        failure = pipeline.wait(stop)
        if failure:
            log.error("pipeline failed: %s", failure, extra={"event": "service_failed"})
            return 1
        log.info("stopping: draining and flushing")
        stopped = pipeline.stop()
    finally:
        pipeline.close()
    if stopped is None:
        log.error("stopped without confirmation from the pipeline", extra={"event": "service_stopped", "undelivered": -1})
        return 1
    fields = {"event": "service_stopped", "undelivered": stopped.undelivered, "missing": stopped.missing}
    if stopped.undelivered:
        log.error("stopped, %d records undelivered", stopped.undelivered, extra=fields)
        return 1
    receipts.remove_handed_on(config.raw)
    if stopped.missing:
        # Delivered is delivered; the gaps are in Kafka's checkpoint and the next start fills them.
        log.warning("stopped: every trade received was delivered, but %d trade ids are missing (gaps declared above, "
                    "not yet backfilled); the next start resumes from Kafka and backfills them", stopped.missing, extra=fields)
        return 0
    log.info("stopped cleanly: every trade received was delivered and no gap is open", extra=fields)
    return 0
