"""The TCMU data path: the shared ring ABI, the command ring and UIO discovery."""

from .command import (
    Command,
    CompletionError,
    Response,
    RingCorruptError,
    RingError,
    RingStats,
    TmrNotification,
)
from .ring import CommandRing, FastScan, FastWrites
from .uio import UioDevice, UioInfo, UioName, list_tcmu_devices, parse_uio_name, read_uio_info

__all__ = [
    "Command",
    "CommandRing",
    "CompletionError",
    "FastScan",
    "FastWrites",
    "Response",
    "RingCorruptError",
    "RingError",
    "RingStats",
    "TmrNotification",
    "UioDevice",
    "UioInfo",
    "UioName",
    "list_tcmu_devices",
    "parse_uio_name",
    "read_uio_info",
]
