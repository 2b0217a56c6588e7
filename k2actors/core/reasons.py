"""Bounded labels for why a connection ended (the `reason` label of reconnect metrics)."""

from __future__ import annotations

_CATEGORIES = (
    ("connect failed", "connect_failed"),
    ("stale", "stale"),
    ("server closed", "server_closed"),
    ("without a close frame", "connection_lost"),
    ("serverShutdown", "server_shutdown"),
    ("rotation", "rotation"),
)


def reason_label(reason: str) -> str:
    for fragment, label in _CATEGORIES:
        if fragment in reason:
            return label
    return "other"
