"""The task's region manager: where mapped dataspaces live in its address space.

A mapping arrives as a memory fd with the IPC result that mapped it; the
region manager mmaps it (read-only unless the kernel granted W, and a
read-only fd cannot be mapped writable: the OS enforces it) and names it by
the virtual address the kernel recorded. ``Revoke`` notices unmap it.
"""
from __future__ import annotations

import dataclasses
import mmap
import os

from capabilities.rights import MemRights
from kernel_model.abi import PAGE_SIZE
from kernel_model.wire import RecvItem

WINDOW_BASE = 0x1000_0000


@dataclasses.dataclass
class Region:
    address: int
    size: int
    writable: bool
    map: mmap.mmap | None

    @property
    def buf(self) -> memoryview:
        if self.map is None:
            raise PermissionError(f"region {self.address:#x} was revoked")
        return memoryview(self.map)

    def read(self, offset: int, length: int) -> bytes:
        if self.map is None:
            raise PermissionError(f"region {self.address:#x} was revoked")
        return self.map[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        if self.map is None:
            raise PermissionError(f"region {self.address:#x} was revoked")
        self.map[offset:offset + len(data)] = data


class RegionManager:
    def __init__(self) -> None:
        self.regions: dict[int, Region] = {}
        self._next = WINDOW_BASE

    def reserve(self, size: int) -> int:
        """A free, page-aligned window for a memory receive buffer."""
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        addr = self._next
        self._next += size + PAGE_SIZE  # a guard page between regions
        return addr

    def attach(self, item: RecvItem, fd: int) -> Region:
        writable = bool(item.rights & MemRights.W)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            m = mmap.mmap(fd, item.size, flags=mmap.MAP_SHARED, prot=prot, offset=item.offset)
        finally:
            os.close(fd)
        old = self.regions.pop(item.index, None)
        if old is not None and old.map is not None:
            old.map.close()
        region = Region(item.index, item.size, writable, m)
        self.regions[item.index] = region
        return region

    def remap(self, address: int, fd: int, size: int, offset: int, rights: int) -> None:
        """The kernel moved this mapping to a new backing object (another holder lost access)."""
        region = self.regions.get(address)
        if region is None:
            os.close(fd)
            return
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if rights & MemRights.W else 0)
        try:
            new = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot, offset=offset)
        finally:
            os.close(fd)
        old, region.map = region.map, new
        if old is not None:
            try:
                old.close()
            except BufferError:
                pass

    def revoke(self, address: int) -> None:
        region = self.regions.pop(address, None)
        if region is not None and region.map is not None:
            m, region.map = region.map, None
            try:
                m.close()
            except BufferError:
                pass  # a memoryview still points at it; the kernel side already revoked it
