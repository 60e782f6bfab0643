#!/usr/bin/env python3
"""A minimal "guest" behind a TAP device, as a VM's NIC would be.

Attaches to an existing TAP (TUNSETIFF, IFF_TAP | IFF_NO_PI), in the
network namespace it is started in, and answers ARP requests and ICMP echo
requests for its address from its MAC; optionally pings a peer through a
gateway (ARP for the gateway first) and reports how many replies came.

  guest.py --tap NAME --ip A.B.C.D --mac MAC [--uid U] [--gid G]
           [--multi-queue] [--ping DST --via GW [--count N]] [--timeout S]

With --uid/--gid it opens /dev/net/tun as root, then drops to that user
and group before TUNSETIFF, which is where the kernel checks the TAP's
owner and group. Prints "ready" once attached ("attach-failed ERRNO" and
exit 3 if the kernel refused), "ping R/N" after its pings, and exits when
stdin closes or after --timeout seconds. Test code only: it is not part of
the suite.
"""
import argparse
import errno
import fcntl
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def ip_bytes(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tap", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--mac", required=True)
    ap.add_argument("--uid", type=int)
    ap.add_argument("--gid", type=int)
    ap.add_argument("--multi-queue", action="store_true")
    ap.add_argument("--ping")
    ap.add_argument("--via")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    fd = os.open("/dev/net/tun", os.O_RDWR)
    if a.gid is not None:
        os.setgroups([])
        os.setgid(a.gid)
    if a.uid is not None:
        os.setuid(a.uid)
    flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if a.multi_queue else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", a.tap.encode(), flags))
    except OSError as e:
        print("attach-failed", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        return 3
    me_mac, me_ip = mac_bytes(a.mac), ip_bytes(a.ip)
    print("ready", flush=True)

    gw_mac = None
    sent = replies = 0
    next_send = time.time()
    ident = os.getpid() & 0xFFFF
    deadline = time.time() + a.timeout

    def arp(op: int, dst_mac: bytes, tha: bytes, tpa: bytes) -> bytes:
        return dst_mac + me_mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + me_mac + me_ip + tha + tpa

    def ipv4(dst_ip: bytes, proto: int, payload: bytes) -> bytes:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, me_ip, dst_ip)
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload

    while time.time() < deadline:
        if a.ping and a.via and sent < a.count and time.time() >= next_send:
            if gw_mac is None:
                os.write(fd, arp(1, b"\xff" * 6, b"\0" * 6, ip_bytes(a.via)))
            else:
                sent += 1
                body = struct.pack("!BBHHH", 8, 0, 0, ident, sent) + b"guest-ping" * 4
                body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
                os.write(fd, gw_mac + me_mac + b"\x08\x00" + ipv4(ip_bytes(a.ping), 1, body))
            next_send = time.time() + 0.2
        if a.ping and sent >= a.count and time.time() >= next_send + 1:
            print("ping %d/%d" % (replies, sent), flush=True)
            a.ping = None
        r, _, _ = select.select([fd, sys.stdin], [], [], 0.1)
        if sys.stdin in r and not sys.stdin.buffer.read1(4096):
            break
        if fd not in r:
            continue
        frame = os.read(fd, 65536)
        if len(frame) < 14:
            continue
        src_mac, ethertype = frame[6:12], frame[12:14]
        if ethertype == b"\x08\x06" and len(frame) >= 42:
            op = struct.unpack("!H", frame[20:22])[0]
            spa, tpa = frame[28:32], frame[38:42]
            if op == 1 and tpa == me_ip:
                os.write(fd, arp(2, src_mac, frame[22:28], spa))
            elif op == 2 and a.via and spa == ip_bytes(a.via):
                gw_mac = frame[22:28]
                next_send = time.time()
        elif ethertype == b"\x08\x00" and len(frame) >= 34:
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            proto, src_ip, dst_ip = ip[9], ip[12:16], ip[16:20]
            if proto != 1 or dst_ip != me_ip:
                continue
            icmp = ip[ihl:struct.unpack("!H", ip[2:4])[0]]
            if icmp[0] == 8:
                reply = b"\x00\x00\x00\x00" + icmp[4:]
                reply = reply[:2] + struct.pack("!H", checksum(reply)) + reply[4:]
                os.write(fd, src_mac + me_mac + b"\x08\x00" + ipv4(src_ip, 1, reply))
            elif icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                replies += 1
    if a.ping:
        print("ping %d/%d" % (replies, sent), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
