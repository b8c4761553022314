"""Per-device configuration: who the LUN says it is, and its command limits.

:class:`DeviceIdentity` feeds INQUIRY (standard data, VPD 80h and 83h); every
identifier is derived from ``volume_id`` alone, so a volume keeps its NAA
name and serial across restarts, hosts and re-exports (multipath and
``/dev/disk/by-id`` depend on that).

:class:`Limits` feeds the Block Limits VPD page (B0h) and is enforced by the
commands it describes.  Limits are in bytes; :meth:`Limits.in_blocks`
converts them for one block size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

VENDOR = "CDP"

# IEEE company id put in the NAA designator.  00-14-05 is the one every LIO
# target (and tcmu-runner) uses for its NAA names; the vendor-specific bits
# below come from a hash of the volume id, so they cannot collide with LIO's
# (which are serial-number hex digits) in practice.  A site with its own OUI
# sets ``naa_oui``.
DEFAULT_NAA_OUI = 0x001405


def _printable(value: str, field: str, max_len: int, *, allow_space: bool = True) -> None:
    low = 0x20 if allow_space else 0x21
    if not value or len(value) > max_len or any(not low <= ord(c) <= 0x7E for c in value):
        raise ValueError(f"{field} must be 1-{max_len} printable ASCII characters: {value!r}")


@dataclass(frozen=True)
class DeviceIdentity:
    volume_id: str
    product: str = "CDP volume"
    revision: str = "0001"
    serial: str | None = None
    naa_oui: int = DEFAULT_NAA_OUI

    def __post_init__(self):
        if not self.volume_id:
            raise ValueError("volume_id must not be empty")
        _printable(self.product, "product", 16)
        _printable(self.revision, "revision", 4)
        if self.serial is not None:
            _printable(self.serial, "serial", 64, allow_space=False)
        if not 0 <= self.naa_oui <= 0xFFFFFF:
            raise ValueError(f"naa_oui must be a 24-bit IEEE company id: {self.naa_oui:#x}")

    def _digest(self, purpose: bytes) -> bytes:
        return hashlib.sha256(purpose + b"\0" + self.volume_id.encode()).digest()

    @property
    def unit_serial(self) -> str:
        """VPD 80h: the configured serial, else 32 hex digits of the volume id's hash."""
        return self.serial if self.serial is not None else self._digest(b"cdp-serial").hex()[:32]

    @property
    def naa(self) -> bytes:
        """16-byte NAA IEEE Registered Extended (type 6) designator: 4 bits NAA,
        24 bits OUI, 100 vendor-specific bits from the volume id's hash."""
        vendor_bits = int.from_bytes(self._digest(b"cdp-naa")[:13], "big") >> 4
        value = (0x6 << 124) | (self.naa_oui << 100) | vendor_bits
        return value.to_bytes(16, "big")


class BlockLimits(NamedTuple):
    """:class:`Limits` in logical blocks for one block size."""

    max_transfer: int
    optimal_transfer: int
    granularity: int
    max_unmap: int
    max_unmap_descriptors: int
    max_write_same: int
    max_compare_and_write: int
    lbppbe: int = 0
    """LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY 16)."""


@dataclass(frozen=True)
class Limits:
    max_transfer_bytes: int = 8 << 20
    # Default: 1 MiB, or the maximum if that is smaller.
    optimal_transfer_bytes: int | None = None
    # Optimal transfer length granularity and optimal unmap granularity.
    granularity_bytes: int = 4096
    max_unmap_bytes: int = 512 << 20
    max_unmap_descriptors: int = 256
    max_write_same_bytes: int = 512 << 20
    # VMware ATS uses one block; LIO's own backstores also advertise 1.
    max_compare_and_write_blocks: int = 1

    def __post_init__(self):
        if self.optimal_transfer_bytes is None:
            object.__setattr__(
                self, "optimal_transfer_bytes", min(1 << 20, self.max_transfer_bytes)
            )
        for name in (
            "max_transfer_bytes",
            "optimal_transfer_bytes",
            "granularity_bytes",
            "max_unmap_bytes",
            "max_write_same_bytes",
        ):
            if getattr(self, name) < 4096:
                raise ValueError(f"{name} must be at least 4096")
        if self.optimal_transfer_bytes > self.max_transfer_bytes:
            raise ValueError("optimal_transfer_bytes exceeds max_transfer_bytes")
        if not 1 <= self.max_unmap_descriptors <= 0xFFFFFFFE:
            raise ValueError("max_unmap_descriptors out of range")
        if not 1 <= self.max_compare_and_write_blocks <= 255:
            raise ValueError("max_compare_and_write_blocks must be 1-255")

    def in_blocks(self, block_size: int) -> BlockLimits:
        """The limits in blocks.  Two derived values:

        * MAXIMUM WRITE SAME LENGTH is capped at the MAXIMUM TRANSFER LENGTH:
          initiators (libiscsi's WRITE SAME tests among them) take a range
          they may WRITE SAME as one they may also WRITE in one command.
        * The physical block is the optimal granularity when that is a power
          of two multiple of the block size (4 KiB over 512-byte blocks:
          LBPPBE 3, as a 512e disk), else the logical block (LBPPBE 0)."""

        def blocks(nbytes: int, cap: int = 0xFFFFFFFF) -> int:
            return max(1, min(nbytes // block_size, cap))

        max_transfer = blocks(self.max_transfer_bytes)
        granularity = blocks(self.granularity_bytes, 0xFFFF)
        per_physical = self.granularity_bytes // block_size
        lbppbe = 0
        if per_physical > 1 and per_physical & (per_physical - 1) == 0:
            lbppbe = min(per_physical.bit_length() - 1, 15)
        return BlockLimits(
            max_transfer=max_transfer,
            optimal_transfer=blocks(self.optimal_transfer_bytes),
            granularity=granularity,
            max_unmap=blocks(self.max_unmap_bytes),
            max_unmap_descriptors=self.max_unmap_descriptors,
            max_write_same=min(blocks(self.max_write_same_bytes), max_transfer),
            max_compare_and_write=self.max_compare_and_write_blocks,
            lbppbe=lbppbe,
        )
