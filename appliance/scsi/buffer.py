"""The data-out buffer as one logical byte string.

TCMU hands a write's data as a list of iovecs (memoryviews into the ring);
tests hand ``bytes``.  :class:`DataOut` joins either into one addressable
buffer without copying until a slice spans two pieces, and never reads past
the end: :meth:`DataOut.get` refuses a range the initiator did not send.
"""

from __future__ import annotations

from collections.abc import Sequence

BytesLike = bytes | bytearray | memoryview
DataOutArg = BytesLike | Sequence[BytesLike] | None


def _as_bytes_view(buf: BytesLike) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


class DataOut:
    __slots__ = ("_parts", "_len")

    def __init__(self, data: DataOutArg = None):
        if data is None:
            parts: list[memoryview] = []
        elif isinstance(data, bytes | bytearray | memoryview):
            parts = [_as_bytes_view(data)]
        else:
            parts = [_as_bytes_view(p) for p in data]
        self._parts = [p for p in parts if p.nbytes]
        self._len = sum(p.nbytes for p in self._parts)

    def __len__(self) -> int:
        return self._len

    def get(self, start: int, length: int) -> BytesLike:
        """Bytes ``[start, start+length)``: a zero-copy view when they lie in
        one piece.  Raises ``IndexError`` if the range is not all present."""
        if start < 0 or length < 0 or start + length > self._len:
            raise IndexError(f"data-out range {start}+{length} beyond {self._len} bytes")
        if length == 0:
            return b""
        pieces = []
        pos = 0
        end = start + length
        for part in self._parts:
            p_end = pos + part.nbytes
            if p_end > start and pos < end:
                pieces.append(part[max(start - pos, 0) : min(end, p_end) - pos])
            if p_end >= end:
                break
            pos = p_end
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def get_bytes(self, start: int, length: int) -> bytes:
        return bytes(self.get(start, length))
