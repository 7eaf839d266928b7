"""Write datagrams to a pcap file (libpcap format, LINKTYPE_RAW IPv4/UDP).

Lets the simulated network (or anything holding datagrams) produce a capture that Wireshark or
tshark can open and, with an SSLKEYLOGFILE, decrypt.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from pathlib import Path

Address = tuple[str, int]
LINKTYPE_RAW = 101
PCAP_MAGIC = 0xA1B2C3D4


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp_packet(source: Address, destination: Address, payload: bytes) -> bytes:
    """An IPv4 packet carrying one UDP datagram (RFC 791, RFC 768)."""
    src = ipaddress.IPv4Address(source[0]).packed
    dst = ipaddress.IPv4Address(destination[0]).packed
    udp_length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_length)
    header = struct.pack("!HHHH", source[1], destination[1], udp_length, 0)
    udp_checksum = _checksum(pseudo + header + payload) or 0xFFFF
    udp = struct.pack("!HHHH", source[1], destination[1], udp_length, udp_checksum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + udp


def write_pcap(path: Path, packets: Iterable[tuple[float, Address, Address, bytes]]) -> int:
    """Write ``(time, source, destination, payload)`` records; returns the packet count."""
    count = 0
    with path.open("wb") as handle:
        handle.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for moment, source, destination, payload in packets:
            packet = ipv4_udp_packet(source, destination, payload)
            seconds = int(moment)
            micros = round((moment - seconds) * 1_000_000)
            handle.write(struct.pack("<IIII", seconds, micros, len(packet), len(packet)))
            handle.write(packet)
            count += 1
    return count
