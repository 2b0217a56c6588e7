"""What /health and /ready answer, from the latest word of each part of the service.

/health: the actor system is alive, which the coordinator's report every second shows.
/ready: every exchange streams and Kafka takes records. Each answer is a status and
a body saying why. Fed the time; the HTTP server reads it from another thread, hence the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

HEALTH_SILENCE_SECONDS = 10.0
# data: every venue's data arrived within the stale timeout; kafka: records are acknowledged.
# Others count once they report: "exchange <venue>" (an endpoint of that exchange streams;
# the coordinator reports each as it starts), cluster (cluster mode: the instance has joined
# its group), and "subscriptions <endpoint>" (no SUBSCRIBE stands refused on that
# endpoint's connections).
READY_COMPONENTS = ("data", "kafka")


class Status:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, tuple[bool, str]] = {}
        self._coordinator_seen_at: float | None = None
        self._pids: dict[str, int] = {}

    def update(self, component: str, ok: bool, detail: str) -> None:
        with self._lock:
            self._components[component] = (ok, detail)

    def coordinator_alive(self, pids: Mapping[str, int], now: float) -> None:
        with self._lock:
            self._coordinator_seen_at, self._pids = now, dict(pids)

    def roots(self) -> tuple[int, ...]:
        """The processes every other process of the service descends from."""
        with self._lock:
            return tuple(self._pids[name] for name in ("service", "actor_system") if name in self._pids)

    def health(self, now: float) -> tuple[bool, dict[str, object]]:
        with self._lock:
            seen_at, pids = self._coordinator_seen_at, dict(self._pids)
        if seen_at is None:
            return False, {"healthy": False, "reason": "the coordinator has not reported yet"}
        silent_for = now - seen_at
        if silent_for > HEALTH_SILENCE_SECONDS:
            return False, {"healthy": False, "reason": f"no word from the coordinator for {silent_for:.0f} s"}
        return True, {"healthy": True, "reason": "actor system alive", "actors": pids}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        with self._lock:
            checks = {
                name: {"ok": self._components[name][0], "detail": self._components[name][1]}
                if name in self._components
                else {"ok": False, "detail": "no report yet"}
                for name in (*READY_COMPONENTS, *sorted(name for name in self._components if name not in READY_COMPONENTS))
            }
        ready = all(check["ok"] for check in checks.values())
        return ready, {"ready": ready, "checks": checks}
