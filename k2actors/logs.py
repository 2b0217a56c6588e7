"""One logging setup for the main process and every actor (Thespian's logDefs)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from k2actors.config import LogConfig

# Attributes every LogRecord has; anything else was passed as `extra` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "actorAddress"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, actor, event, message, and the fields a
    call passed as `extra`. `event` is a stable name to filter on (`connection_ended`,
    `gap_declared`, `dead_letter`, ...); lines without one are `log`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "actor": record.name.rpartition(".")[2],
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def logging_config(log: LogConfig) -> dict:
    formatter = {"()": "k2actors.logs.JsonFormatter"} if log.format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"k2": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "k2", "stream": "ext://sys.stderr"}},
        "loggers": {"k2actors": {"level": log.level, "handlers": ["stderr"], "propagate": False}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


# librdkafka's suffix that makes each retry's line differ from the last one's.
_RETRY_TIMING = re.compile(r" \(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)$")


class LastLibrdkafkaLine(logging.Handler):
    """Keeps librdkafka's last line instead of printing it. An absent broker brings about
    twenty alike a second; the last one is the reason a caller gives, once."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""  # as librdkafka said it
        self.text = ""  # the same without its changing retry timing

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().rpartition("]: ")[2]
        self.text = _RETRY_TIMING.sub("", self.last)


def quiet_librdkafka_logger(name: str) -> tuple[logging.Logger, LastLibrdkafkaLine]:
    """A logger for a librdkafka client whose lines are kept, not printed."""
    lines = LastLibrdkafkaLine()
    logger = logging.Logger(name)
    logger.addHandler(lines)
    return logger, lines
