"""Small socket helpers, and the name of each connection."""

from __future__ import annotations

import secrets
import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def new_conn_id() -> str:
    """Fresh for every connection (and every REST response), and in the order they were made:
    its first 16 hex digits are the time in nanoseconds, the other 16 are random. The raw
    record's deduplication forgets the oldest sources first (k2actors.core.raw)."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"
