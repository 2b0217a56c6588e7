"""The actor shell. A trade enters in connection.py, is shaped in normaliser.py and leaves
in producer.py; coordinator.py supervises them all and metrics.py serves what they report.
shell.py is what every supervised actor shares. Policy lives in k2actors.core."""

import k2actors.thespian_transport  # noqa: F401  (patches the transport in every actor process)
