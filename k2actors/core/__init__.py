"""The functional core: pure functions and small classes with no I/O and no actors."""
