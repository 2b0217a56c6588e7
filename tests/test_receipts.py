"""Receipts (k2actors.receipts) on real files and real processes, and the count of frames
lost with a killed process (k2actors.core.raw.frames_lost) against a plain model."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2actors import processes
from k2actors.config import ConfigError, RawConfig
from k2actors.core.ranges import IdRanges
from k2actors.core.raw import frames_lost
from k2actors.receipts import LeftReceipt, Receipt, claim, left_behind, make_directory, remove_handed_on

held_ranges = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 10)), max_size=6).map(
    lambda pairs: IdRanges([(first, first + length) for first, length in pairs]))


@given(st.integers(0, 60), st.integers(0, 60), st.none() | held_ranges)
def test_frames_lost_are_those_received_after_the_last_confirmed_that_kafka_does_not_hold(received, confirmed, held):
    lost = frames_lost(received, confirmed, held)
    expected = {seq for seq in range(confirmed + 1, received + 1) if held is None or seq not in held}
    assert {seq for first, last in lost.ranges() for seq in range(first, last + 1)} == expected


def hold_a_receipt(directory: str, received: int, confirmed: int, ready) -> None:
    receipt = Receipt(directory, "BINANCE", "ws://venue/stream", "conn-1")
    for seq in range(1, received + 1):
        receipt.received(seq)
    receipt.confirmed(confirmed)
    ready.set()
    signal.pause()  # until killed


def test_a_receipt_outlives_its_killed_process_with_its_counts_and_is_claimed_once(tmp_path):
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=hold_a_receipt, args=(str(tmp_path), 120, 97, ready))
    child.start()
    assert ready.wait(20)
    assert list(left_behind(str(tmp_path))) == []  # its process holds it: not left behind
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    [left] = left_behind(str(tmp_path))
    assert left == LeftReceipt(tmp_path / "conn-1.receipt", "BINANCE", "ws://venue/stream", "conn-1", 120, 97, child.pid, False)
    assert claim(left)
    assert not claim(left)  # a second service finds it taken
    assert list(tmp_path.iterdir()) == []


def test_a_receipt_of_another_running_service_is_left_to_it(tmp_path, monkeypatch):
    monkeypatch.setenv(processes.SERVICE_PID_VARIABLE, str(os.getppid()))  # a service that runs: this test's parent
    receipt = Receipt(str(tmp_path), "BINANCE", "ws://venue/stream", "conn-2")
    receipt.received(5)
    receipt.close()  # its connection ended with frames unconfirmed: kept, unlocked
    assert (tmp_path / "conn-2.receipt").exists()
    monkeypatch.setenv(processes.SERVICE_PID_VARIABLE, str(os.getpid()))  # seen from another service
    assert list(left_behind(str(tmp_path))) == []
    monkeypatch.setenv(processes.SERVICE_PID_VARIABLE, str(os.getppid()))  # seen from its own
    assert [left.received for left in left_behind(str(tmp_path))] == [5]


def test_after_a_clean_stop_the_service_removes_the_receipts_its_connections_handed_on_and_no_other(tmp_path):
    handed, killed = (Receipt(str(tmp_path), "BINANCE", "ws://venue/stream", conn_id) for conn_id in ("handed", "killed"))
    for receipt in (handed, killed):
        receipt.received(10)
        receipt.confirmed(4)  # the last confirmations did not reach the connection before it exited
    handed.handed_on()
    handed.close()
    killed.close()
    remove_handed_on(RawConfig(receipts_dir=str(tmp_path)))
    assert [path.name for path in tmp_path.iterdir()] == ["killed.receipt"]  # the producer settles it against Kafka


def test_a_settled_receipt_is_removed_when_its_connection_closes(tmp_path):
    receipt = Receipt(str(tmp_path), "BINANCE", "ws://venue/stream", "conn-3")
    receipt.received(3)
    receipt.confirmed(3)
    assert receipt.settled
    receipt.close()
    assert list(tmp_path.iterdir()) == []


def test_a_receipts_directory_that_cannot_be_made_is_a_config_error_naming_the_key(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"raw\.receipts_dir"):
        make_directory(RawConfig(receipts_dir=str(blocker / "receipts")))
    make_directory(RawConfig(receipts_dir=str(tmp_path / "made" / "receipts")))
    assert (tmp_path / "made" / "receipts").is_dir()


def test_a_file_that_is_no_receipt_is_removed_not_counted(tmp_path):
    (tmp_path / "torn.receipt").write_bytes(b"\x01\x00")  # its process died while writing it
    (tmp_path / "garbage.receipt").write_bytes(bytes(24) + b"{not json")
    assert list(left_behind(str(tmp_path))) == []
    assert list(tmp_path.iterdir()) == []
