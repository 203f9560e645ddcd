#!/usr/bin/env python3
"""A fixed number of connections, one request each, for counting a proxy's instructions per
connection (bench/paths.sh, BENCH_IPR): wrk and openssl s_time only run for a time, and a
count under callgrind needs the same work for every proxy.

Each connection asks `GET PATH` with `Connection: close` and reads to the end; an answer
counts when it is a 200 with a body of --size bytes. With --tls the handshake is a full one
every time, unless --resume: then each of the --concurrency clients resumes, on each of its
connections after its first, the session its previous connection was given (the first is
a full handshake, the same number in every run, so a difference of two runs leaves it out;
a ticket may be single-use; TLS 1.3 tickets arrive after the handshake, so the session is
taken once the answer is read). Prints "COUNT - - ERRORS" (the shape of paths.sh's load lines) and exits
non-zero when any connection failed.
"""

import argparse
import socket
import ssl
import sys
import threading


def one(args, ctx, session):
    """One connection; returns (ok, its TLS session or None)."""
    raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sock = raw
    try:
        if ctx is not None:
            sock = ctx.wrap_socket(raw, server_hostname=args.sni, session=session)
        extra = "".join(f"{h}\r\n" for h in args.header)
        request = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.authority}\r\n{extra}"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        data = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, sep, body = bytes(data).partition(b"\r\n\r\n")
        ok = bool(sep) and head.startswith(b"HTTP/1.1 200 ") and len(body) == args.size
        if ok and args.resume and session is not None and not sock.session_reused:
            ok = False  # asked to resume and did not: the figure would be a full handshake's
        return ok, (sock.session if ctx is not None else None)
    except (OSError, ssl.SSLError):
        return False, None
    finally:
        sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/1k")
    p.add_argument("--authority", default="127.0.0.1")
    p.add_argument("--header", action="append", default=[], help="'Name: value', sent too")
    p.add_argument("--size", type=int, default=1024, help="the body length a good answer has")
    p.add_argument("--count", type=int, required=True, help="connections, in all")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--resume", action="store_true", help="resume sessions (see above)")
    p.add_argument("--sni", default="bench.local")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    if args.count < 1 or args.concurrency < 1:
        p.error("--count and --concurrency must be at least 1")

    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])

    lock = threading.Lock()
    counts = {"left": args.count, "ok": 0, "errors": 0}

    def worker():
        session = None
        while True:
            with lock:
                if counts["left"] == 0:
                    return
                counts["left"] -= 1
            good, got = one(args, ctx, session)
            if args.resume and got is not None:
                session = got
            with lock:
                counts["ok" if good else "errors"] += 1

    threads = [threading.Thread(target=worker) for _ in range(min(args.concurrency, args.count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{counts['ok']} - - {counts['errors']}")
    sys.exit(1 if counts["errors"] else 0)


if __name__ == "__main__":
    main()
