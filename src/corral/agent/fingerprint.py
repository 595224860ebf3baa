"""What this machine offers: cpu, memory, an address, host ports already in use, and facts
(os, kernel, arch) for constraints. Read once at agent start with psutil."""

from __future__ import annotations

import platform
import socket

import psutil

from corral import __version__

__all__ = ["detect_address", "fingerprint_attributes", "host_capacity", "listening_ports"]


def host_capacity() -> tuple[float, int]:
    return float(psutil.cpu_count() or 1), int(psutil.virtual_memory().total)


def listening_ports(lo: int, hi: int) -> list[int]:
    """Ports in [lo, hi] something on the host already listens on (TCP or UDP)."""
    ports = set()
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and lo <= conn.laddr.port <= hi and (
                    conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM):
                ports.add(conn.laddr.port)
    except (psutil.AccessDenied, OSError):
        pass
    return sorted(ports)


def detect_address() -> str:
    """The address other machines reach this one at: the first IPv4 address of an
    interface that is up and not loopback (interfaces sorted by name), else 127.0.0.1.
    Agents on multi-homed hosts should pass `--address`."""
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name == "lo" or not (stats.get(name) and stats[name].isup):
            continue
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return str(addr.address)
    return "127.0.0.1"


def fingerprint_attributes() -> dict[str, str]:
    return {"os": platform.system().lower(), "kernel": platform.release(),
            "arch": platform.machine(), "corral_version": __version__,
            "hostname": socket.gethostname()}
