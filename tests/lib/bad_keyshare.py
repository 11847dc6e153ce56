#!/usr/bin/env python3
"""bad_keyshare.py PORT PROTO GROUP KIND - a raw TLS client (no crypto needed) that sends
an ECDHE key share the server must refuse, and prints the server's answer:
"alert <description number>", "closed", or "timeout".

  PROTO  tls13: the bad point is the ClientHello's key_share;
         tls12: a full ClientHello for ECDHE-RSA-AES128-GCM-SHA256, the server's flight
                read up to ServerHelloDone (the server has made its key pair), then a
                ClientKeyExchange with the bad point
  GROUP  P-256, P-384 or P-521
  KIND   offcurve (an uncompressed point not on the curve), short (one byte missing),
         long (one byte more), infinity (the point at infinity, 0x00), compressed
         (0x02 || X), zero (0x04 and zeros), random (random bytes of the right length)
Used by tests/ecdhe.sh; every answer is compared with a software-key s_server's."""
import os
import socket
import struct
import sys

GROUPS = {"P-256": (23, 32), "P-384": (24, 48), "P-521": (25, 66)}


def point(kind, flen):
    if kind == "offcurve":
        return b"\x04" + bytes([1] * flen) + bytes([2] * flen)
    if kind == "short":
        return b"\x04" + os.urandom(2 * flen - 1)
    if kind == "long":
        return b"\x04" + os.urandom(2 * flen + 1)
    if kind == "infinity":
        return b"\x00"
    if kind == "compressed":
        return b"\x02" + os.urandom(flen)
    if kind == "zero":
        return b"\x04" + bytes(2 * flen)
    if kind == "random":
        return os.urandom(1 + 2 * flen)
    raise SystemExit("unknown kind " + kind)


def ext(t, body):
    return struct.pack(">HH", t, len(body)) + body


def handshake(t, body):
    return bytes([t]) + struct.pack(">I", len(body))[1:] + body


def record(ct, body, ver=0x0303):
    return struct.pack(">BHH", ct, ver, len(body)) + body


def client_hello(proto, gid, share):
    sigalgs = [0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601]
    exts = ext(0x000A, struct.pack(">HH", 2, gid))  # supported_groups
    exts += ext(0x000B, b"\x01\x00")  # ec_point_formats: uncompressed
    exts += ext(0x000D, struct.pack(">H", 2 * len(sigalgs)) +
                b"".join(struct.pack(">H", a) for a in sigalgs))
    if proto == "tls13":
        suites = [0x1301, 0x1302, 0x1303]
        exts += ext(0x002B, b"\x02\x03\x04")  # supported_versions: TLS 1.3
        ks = struct.pack(">HH", gid, len(share)) + share
        exts += ext(0x0033, struct.pack(">H", len(ks)) + ks)  # key_share
    else:
        suites = [0xC02F]  # ECDHE-RSA-AES128-GCM-SHA256
    body = b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32)
    body += struct.pack(">H", 2 * len(suites)) + b"".join(struct.pack(">H", s) for s in suites)
    body += b"\x01\x00" + struct.pack(">H", len(exts)) + exts
    return record(0x16, handshake(1, body), 0x0301)


def read_records(sock, buf):
    """Yields (content type, body) until the connection ends."""
    while True:
        while len(buf) >= 5:
            ct, _, ln = struct.unpack(">BHH", buf[:5])
            if len(buf) < 5 + ln:
                break
            body = bytes(buf[5:5 + ln])
            del buf[:5 + ln]
            yield ct, body
        data = sock.recv(65536)
        if not data:
            return
        buf.extend(data)


def main():
    port, proto, group, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    gid, flen = GROUPS[group]
    bad = point(kind, flen)
    good_dummy = b"\x04" + os.urandom(2 * flen)  # (tls12: the ClientHello has no share)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(client_hello(proto, gid, bad if proto == "tls13" else good_dummy))
        buf = bytearray()
        hs = bytearray()
        sent_cke = proto == "tls13"
        for ct, body in read_records(s, buf):
            if ct == 0x15 and len(body) >= 2:
                print("alert %d" % body[1])
                return
            if ct == 0x16 and not sent_cke:
                hs.extend(body)
                while len(hs) >= 4:
                    t = hs[0]
                    ln = int.from_bytes(hs[1:4], "big")
                    if len(hs) < 4 + ln:
                        break
                    del hs[:4 + ln]
                    if t == 14:  # ServerHelloDone: the key pair exists; the bad point
                        cke = handshake(16, bytes([len(bad)]) + bad)
                        s.sendall(record(0x16, cke))
                        sent_cke = True
        print("closed")
    except socket.timeout:
        print("timeout")
    finally:
        s.close()


if __name__ == "__main__":
    main()
