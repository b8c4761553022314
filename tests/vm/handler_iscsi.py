"""A tiny iSCSI initiator for the host side of the VM tests: libiscsi through ctypes.

libiscsi-bin (``iscsi-inq``, ``iscsi-test-cu``...) brings ``libiscsi.so.7`` but
no tool that writes a chosen pattern and reads it back, and Debian ships no
Python binding; these few synchronous calls are enough::

    with IscsiLun("127.0.0.1:13260", "iqn.2003-01.org.example.cdp:t1", 0) as lun:
        lun.write16(0, data, fua=True)
        assert lun.read16(0, len(data)) == data
"""

from __future__ import annotations

import ctypes
import ctypes.util

SCSI_STATUS_GOOD = 0
ISCSI_SESSION_NORMAL = 2
INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"


class IscsiError(RuntimeError):
    pass


class _ScsiIovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("iscsi") or "libiscsi.so.7"
    lib = ctypes.CDLL(name)
    vp, i, u32, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
    sigs = {
        "iscsi_create_context": (vp, [ctypes.c_char_p]),
        "iscsi_set_targetname": (i, [vp, ctypes.c_char_p]),
        "iscsi_set_session_type": (i, [vp, i]),
        "iscsi_full_connect_sync": (i, [vp, ctypes.c_char_p, i]),
        "iscsi_get_error": (ctypes.c_char_p, [vp]),
        "iscsi_logout_sync": (i, [vp]),
        "iscsi_destroy_context": (i, [vp]),
        "iscsi_write16_sync": (vp, [vp, i, u64, ctypes.c_char_p, u32, i, i, i, i, i, i]),
        "iscsi_read16_iov_sync": (
            vp,
            [vp, i, u64, u32, i, i, i, i, i, i, ctypes.POINTER(_ScsiIovec), i],
        ),
        "iscsi_synchronizecache16_sync": (vp, [vp, i, u64, u32, i, i]),
        "scsi_free_scsi_task": (None, [vp]),
    }
    for fname, (res, args) in sigs.items():
        fn = getattr(lib, fname)
        fn.restype, fn.argtypes = res, args
    return lib


class IscsiLun:
    """One logged-in session to one LUN (synchronous; not thread-safe)."""

    def __init__(self, portal: str, target: str, lun: int = 0, block_size: int = 512,
                 initiator: str = INITIATOR) -> None:  # fmt: skip
        self.lib = _lib()
        self.lun = lun
        self.block_size = block_size
        self.ctx = self.lib.iscsi_create_context(initiator.encode())
        if not self.ctx:
            raise IscsiError("iscsi_create_context failed")
        self.lib.iscsi_set_targetname(self.ctx, target.encode())
        self.lib.iscsi_set_session_type(self.ctx, ISCSI_SESSION_NORMAL)
        if self.lib.iscsi_full_connect_sync(self.ctx, portal.encode(), lun) != 0:
            err = self._error()
            self.lib.iscsi_destroy_context(self.ctx)
            raise IscsiError(f"login to {portal} {target} failed: {err}")

    def _error(self) -> str:
        msg = self.lib.iscsi_get_error(self.ctx)
        return msg.decode(errors="replace") if msg else "?"

    def _finish(self, task, what: str) -> None:
        if not task:
            raise IscsiError(f"{what}: {self._error()}")
        status = ctypes.cast(task, ctypes.POINTER(ctypes.c_int))[0]
        self.lib.scsi_free_scsi_task(task)
        if status != SCSI_STATUS_GOOD:
            raise IscsiError(f"{what}: SCSI status {status:#x}: {self._error()}")

    def write16(self, lba: int, data: bytes, *, fua: bool = False) -> None:
        task = self.lib.iscsi_write16_sync(
            self.ctx, self.lun, lba, data, len(data), self.block_size, 0, 0, int(fua), 0, 0
        )
        self._finish(task, f"WRITE(16) lba {lba}")

    def read16(self, lba: int, length: int) -> bytes:
        buf = ctypes.create_string_buffer(length)
        iov = _ScsiIovec(ctypes.cast(buf, ctypes.c_void_p), length)
        task = self.lib.iscsi_read16_iov_sync(
            self.ctx, self.lun, lba, length, self.block_size, 0, 0, 0, 0, 0,
            ctypes.byref(iov), 1,
        )  # fmt: skip
        self._finish(task, f"READ(16) lba {lba}")
        return buf.raw

    def sync_cache(self) -> None:
        task = self.lib.iscsi_synchronizecache16_sync(self.ctx, self.lun, 0, 0, 0, 0)
        self._finish(task, "SYNCHRONIZE CACHE(16)")

    def close(self) -> None:
        if self.ctx:
            self.lib.iscsi_logout_sync(self.ctx)
            self.lib.iscsi_destroy_context(self.ctx)
            self.ctx = None

    def __enter__(self) -> IscsiLun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
