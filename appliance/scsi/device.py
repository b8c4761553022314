"""The dispatcher: one :class:`ScsiDevice` per LUN turns a CDB into a result.

``ScsiDevice.execute(cdb, data_out)`` is pure with respect to the transport:
it takes the CDB bytes and the data-out buffer (bytes, or the ring's iovecs
as a list of memoryviews) and returns a :class:`~appliance.scsi.result.ScsiResult`.
It never raises: refused commands are CHECK CONDITION with sense data,
backend errors are mapped by type (see :mod:`appliance.scsi.errors`), and
any other exception becomes HARDWARE ERROR / INTERNAL TARGET FAILURE and is
logged.  A refused command does not reach the backend.

Plain READ/WRITE(10/16) first try ``block_io.FAST_PATH``: the same checks
and the same outcome, without the table walk (it hands back anything
unusual).  Steps: look the opcode (and service action) up in the command table
(INVALID COMMAND OPERATION CODE if absent), refuse bits outside the CDB usage
bitmap (INVALID FIELD IN CDB with a field pointer), refuse medium-changing
commands on a read-only LUN (DATA PROTECT / WRITE PROTECTED), then run the
handler.

State kept per device: the write-cache-enabled bit (WCE), set by MODE SELECT
(a plain attribute, so concurrent commands from several threads see either
the old or the new value), and the EXTENDED COPY statuses held for RECEIVE
COPY RESULTS (:class:`~appliance.scsi.xcopy.CopyManager`).  REPORT LUNS and persistent reservations
never get here (LIO answers them); nor do unit attentions, which this layer
does not raise (no per-nexus state: MODE SELECT does not post MODE
PARAMETERS CHANGED, a resize does not post CAPACITY DATA HAS CHANGED).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import block_io, provisioning, xcopy
from .backend import BlockBackend, SupportsReadyCheck
from .buffer import DataOut, DataOutArg
from .cdb import BY_KEY, be, check_cdb, lookup
from .config import DeviceIdentity, Limits
from .constants import (
    INTERNAL_TARGET_FAILURE,
    LUN_NOT_READY,
    MI_REPORT_SUPPORTED_OPCODES,
    NO_ADDITIONAL_SENSE,
    RCR_COPY_STATUS,
    RCR_OPERATING_PARAMETERS,
    SAI_GET_LBA_STATUS,
    SAI_READ_CAPACITY_16,
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
    XCOPY_LID1,
    Op,
    SenseKey,
    Status,
)
from .errors import (
    BackendBusy,
    BackendError,
    BackendQueueFull,
    MediumError,
    NotReady,
    SpaceAllocationFailed,
    WriteProtected,
)
from .inquiry import inquiry
from .mode import mode_select, mode_sense
from .result import GOOD, ScsiResult, check_condition, data_in
from .rsoc import report_supported_opcodes
from .sense import CheckCondition, fixed_sense, invalid_field_in_cdb, no_sense_descriptor

log = logging.getLogger(__name__)

Handler = Callable[["ScsiDevice", bytes, DataOut], ScsiResult]

# A medium error during these is a WRITE ERROR although they change nothing.
_FLUSHES = frozenset({Op.SYNCHRONIZE_CACHE_10, Op.SYNCHRONIZE_CACHE_16})


class ScsiDevice:
    """One logical unit backed by ``backend``.

    ``write_cache``: initial WCE (True: write-back with FUA honoured;
    False: every write is FUA).  ``read_only``: WP is reported and every
    medium-changing command is refused with DATA PROTECT."""

    def __init__(
        self,
        backend: BlockBackend,
        identity: DeviceIdentity,
        *,
        limits: Limits | None = None,
        write_cache: bool = True,
        read_only: bool = False,
    ):
        if backend.block_size not in (512, 4096):
            raise ValueError(f"block size must be 512 or 4096, not {backend.block_size}")
        self.backend = backend
        self.identity = identity
        self.config_limits = limits or Limits()
        self.limits = self.config_limits.in_blocks(backend.block_size)
        self.write_cache = write_cache
        self.read_only = read_only
        self.copy_manager = xcopy.CopyManager()

    @property
    def block_size(self) -> int:
        return self.backend.block_size

    def capacity(self) -> int:
        """Capacity in logical blocks, read from the backend on every call."""
        return self.backend.size // self.backend.block_size

    def fua(self, requested: bool) -> bool:
        """Whether a write must be durable on completion."""
        return requested or not self.write_cache

    # -- entry point ------------------------------------------------------------

    def execute(self, cdb: bytes, data_out: DataOutArg = None) -> ScsiResult:
        """Run one command.  ``cdb``: the CDB bytes (a longer CDB area is fine);
        ``data_out``: bytes-like, a sequence of bytes-likes (iovecs) or None.
        Never raises (except BaseException such as KeyboardInterrupt)."""
        spec = None
        try:
            cdb = bytes(cdb)
            fast = _FAST_PATH.get(cdb[0]) if cdb else None
            if fast is not None:
                spec = _FAST_SPECS[cdb[0]]  # what a backend error is mapped against
                result = fast(self, cdb, data_out)
                if result is not None:
                    return result
            spec = lookup(cdb)
            check_cdb(spec, cdb)
            if spec.writes and self.read_only:
                raise CheckCondition.of(SenseKey.DATA_PROTECT, WRITE_PROTECTED)
            return _HANDLERS[spec.key](self, cdb[: spec.cdb_len], DataOut(data_out))
        except CheckCondition as exc:
            return check_condition(exc.sense)
        except BackendError as exc:
            writes = spec is not None and (spec.writes or spec.opcode in _FLUSHES)
            try:
                return self._backend_error(exc, writes=writes)
            except Exception:
                log.exception("cannot map backend error %r", exc)
        except Exception:
            log.exception("internal error in %s", spec.name if spec else "CDB decoding")
        return check_condition(fixed_sense(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE))

    def error_result(self, exc: Exception, *, writes: bool) -> ScsiResult:
        """What :meth:`execute` answers when the backend raises ``exc`` (for
        callers that run a backend call themselves: the handler's fast path)."""
        if isinstance(exc, BackendError):
            try:
                return self._backend_error(exc, writes=writes)
            except Exception:
                log.exception("cannot map backend error %r", exc)
        else:
            log.error("internal error in a backend call", exc_info=exc)
        return check_condition(fixed_sense(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE))

    def _backend_error(self, exc: BackendError, *, writes: bool) -> ScsiResult:
        if isinstance(exc, BackendBusy):
            return ScsiResult(Status.BUSY)
        if isinstance(exc, BackendQueueFull):
            return ScsiResult(Status.TASK_SET_FULL)
        log.warning("backend error: %r", exc)
        if isinstance(exc, NotReady):
            sense = fixed_sense(SenseKey.NOT_READY, (LUN_NOT_READY[0], exc.ascq))
        elif isinstance(exc, MediumError):
            lba = None if exc.offset is None else exc.offset // self.block_size
            asc = WRITE_ERROR if writes else UNRECOVERED_READ_ERROR
            sense = fixed_sense(SenseKey.MEDIUM_ERROR, asc, information=lba)
        elif isinstance(exc, SpaceAllocationFailed):
            sense = fixed_sense(SenseKey.DATA_PROTECT, SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
        elif isinstance(exc, WriteProtected):
            sense = fixed_sense(SenseKey.DATA_PROTECT, WRITE_PROTECTED)
        else:
            sense = fixed_sense(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE)
        return check_condition(sense)


# -- small SPC/SBC commands ------------------------------------------------------


def _test_unit_ready(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    if isinstance(dev.backend, SupportsReadyCheck):
        dev.backend.check_ready()
    return GOOD


def _request_sense(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """No sense is ever pending (no deferred errors, no unit attentions)."""
    if cdb[1] & 0x01:
        payload = no_sense_descriptor()
    else:
        payload = fixed_sense(SenseKey.NO_SENSE, NO_ADDITIONAL_SENSE)
    return data_in(payload, cdb[4])


def _inquiry(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    return inquiry(cdb, dev.identity, dev.limits)


def _mode_sense(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    return mode_sense(
        cdb,
        wce=dev.write_cache,
        capacity=dev.capacity(),
        block_size=dev.block_size,
        read_only=dev.read_only,
    )


def _mode_select(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    dev.write_cache = mode_select(
        cdb, data, wce=dev.write_cache, capacity=dev.capacity(), block_size=dev.block_size
    )
    return GOOD


def _start_stop_unit(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """The medium is not removable: LOEJ is refused; start/stop and power
    conditions are accepted and change nothing (a CDP volume keeps serving)."""
    if cdb[4] & 0x02:
        raise invalid_field_in_cdb(4, 1)
    return GOOD


def _read_capacity_10(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    if not cdb[8] & 0x01 and be(cdb, 2, 4):
        raise invalid_field_in_cdb(2)  # LBA without PMI
    last = max(dev.capacity() - 1, 0)
    return data_in(min(last, 0xFFFFFFFF).to_bytes(4, "big") + dev.block_size.to_bytes(4, "big"))


def _read_capacity_16(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """32 bytes: last LBA, block length, no protection, LOGICAL BLOCKS PER
    PHYSICAL BLOCK EXPONENT (byte 13, from the granularity, see
    :meth:`Limits.in_blocks`), lowest aligned LBA 0, LBPME|LBPRZ."""
    if not cdb[14] & 0x01 and be(cdb, 2, 8):
        raise invalid_field_in_cdb(2)
    payload = bytearray(32)
    payload[0:8] = max(dev.capacity() - 1, 0).to_bytes(8, "big")
    payload[8:12] = dev.block_size.to_bytes(4, "big")
    payload[13] = dev.limits.lbppbe & 0x0F
    payload[14] = 0x80 | 0x40
    return data_in(bytes(payload), be(cdb, 10, 4))


def _read_defect_data_10(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """An empty list, in the format asked for."""
    return data_in(bytes([0, cdb[2] & 0x1F, 0, 0]), be(cdb, 7, 2))


def _read_defect_data_12(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    return data_in(bytes([0, cdb[1] & 0x1F]) + bytes(6), be(cdb, 6, 4))


def _report_supported_opcodes(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    return report_supported_opcodes(cdb)


_HANDLERS: dict[tuple[int, int | None], Handler] = {
    (Op.TEST_UNIT_READY, None): _test_unit_ready,
    (Op.REQUEST_SENSE, None): _request_sense,
    (Op.READ_6, None): block_io.read,
    (Op.WRITE_6, None): block_io.write,
    (Op.INQUIRY, None): _inquiry,
    (Op.MODE_SELECT_6, None): _mode_select,
    (Op.MODE_SENSE_6, None): _mode_sense,
    (Op.START_STOP_UNIT, None): _start_stop_unit,
    (Op.READ_CAPACITY_10, None): _read_capacity_10,
    (Op.READ_10, None): block_io.read,
    (Op.WRITE_10, None): block_io.write,
    (Op.WRITE_AND_VERIFY_10, None): block_io.write_and_verify,
    (Op.VERIFY_10, None): block_io.verify,
    (Op.PRE_FETCH_10, None): block_io.pre_fetch,
    (Op.SYNCHRONIZE_CACHE_10, None): block_io.synchronize_cache,
    (Op.READ_DEFECT_DATA_10, None): _read_defect_data_10,
    (Op.WRITE_SAME_10, None): provisioning.write_same,
    (Op.UNMAP, None): provisioning.unmap,
    (Op.MODE_SELECT_10, None): _mode_select,
    (Op.MODE_SENSE_10, None): _mode_sense,
    (Op.EXTENDED_COPY, XCOPY_LID1): xcopy.extended_copy,
    (Op.RECEIVE_COPY_RESULTS, RCR_COPY_STATUS): xcopy.receive_copy_status,
    (Op.RECEIVE_COPY_RESULTS, RCR_OPERATING_PARAMETERS): xcopy.receive_operating_parameters,
    (Op.READ_16, None): block_io.read,
    (Op.COMPARE_AND_WRITE, None): block_io.compare_and_write,
    (Op.WRITE_16, None): block_io.write,
    (Op.ORWRITE_16, None): block_io.orwrite,
    (Op.WRITE_AND_VERIFY_16, None): block_io.write_and_verify,
    (Op.VERIFY_16, None): block_io.verify,
    (Op.PRE_FETCH_16, None): block_io.pre_fetch,
    (Op.SYNCHRONIZE_CACHE_16, None): block_io.synchronize_cache,
    (Op.WRITE_SAME_16, None): provisioning.write_same,
    (Op.SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16): _read_capacity_16,
    (Op.SERVICE_ACTION_IN_16, SAI_GET_LBA_STATUS): provisioning.get_lba_status,
    (Op.MAINTENANCE_IN, MI_REPORT_SUPPORTED_OPCODES): _report_supported_opcodes,
    (Op.READ_12, None): block_io.read,
    (Op.WRITE_12, None): block_io.write,
    (Op.WRITE_AND_VERIFY_12, None): block_io.write_and_verify,
    (Op.VERIFY_12, None): block_io.verify,
    (Op.READ_DEFECT_DATA_12, None): _read_defect_data_12,
}

if set(_HANDLERS) != set(BY_KEY):  # pragma: no cover - a wiring mistake
    raise ImportError("SCSI command table and handler table disagree")

_FAST_PATH = block_io.FAST_PATH
_FAST_SPECS = {op: BY_KEY[(op, None)] for op in _FAST_PATH}
