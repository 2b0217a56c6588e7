"""Exponential backoff with full jitter (delay drawn uniformly from 0 to the capped bound)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, draw=random.random) -> float:
    """Delay before retry number `attempt` (1 for the first retry after a failure)."""
    bound = min(cap, base * 2 ** max(attempt - 1, 0))
    return draw() * bound
