"""What a command returns to the transport (the TCMU ring code)."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import Status

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class ScsiResult:
    """``status``: SAM status byte.  ``data``: data-in for the initiator,
    already cut to the CDB's ALLOCATION LENGTH (or the transfer length).
    ``sense``: fixed-format sense data, non-empty only with CHECK CONDITION.

    The transport copies :attr:`data` into the data-in iovecs and reports
    :attr:`read_len` bytes as transferred (TCMU READ_LEN), so the initiator
    sees a residual when ``read_len`` is less than it asked for."""

    status: int
    data: BytesLike = b""
    sense: bytes = b""

    @property
    def read_len(self) -> int:
        return memoryview(self.data).nbytes

    @property
    def ok(self) -> bool:
        return self.status == Status.GOOD


GOOD = ScsiResult(Status.GOOD)


def data_in(payload: BytesLike, allocation_length: int | None = None) -> ScsiResult:
    """GOOD with ``payload``, truncated to ``allocation_length`` if given."""
    if allocation_length is not None and allocation_length < len(payload):
        payload = payload[:allocation_length]
    return ScsiResult(Status.GOOD, payload)


def check_condition(sense: bytes) -> ScsiResult:
    return ScsiResult(Status.CHECK_CONDITION, b"", sense)
