"""Shared helpers for engine tests."""

from __future__ import annotations

import os

from appliance.engine import ProtectedVolume


def make_volume(tmp_path, size=4 << 20, block_size=512, **options) -> ProtectedVolume:
    return ProtectedVolume.create(
        str(tmp_path / "state"),
        primary=str(tmp_path / "primary.img"),
        secondary=str(tmp_path / "secondary"),
        size=size,
        block_size=block_size,
        **options,
    )


def reopen(tmp_path, **options) -> ProtectedVolume:
    return ProtectedVolume.open(str(tmp_path / "state"), **options)


def pattern(tag: int, length: int) -> bytes:
    """Deterministic, distinct bytes for write number ``tag``."""
    seed = tag.to_bytes(8, "little") * 64
    out = (seed * (length // len(seed) + 1))[:length]
    return bytes(b ^ (i * 7 & 0xFF) for i, b in enumerate(out[:64])) + out[64:]


def random_bytes(length: int) -> bytes:
    return os.urandom(length)
