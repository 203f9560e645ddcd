#!/usr/bin/env python3
"""Holds many keep-alive connections to a proxy, a few of them busy (bench/paths.sh idle-10k).

Opens --connections HTTP/1.1 connections to 127.0.0.1:--port, asks `GET /1k` once on each
(so each is a served keep-alive connection, not just an accepted socket), touches --ready,
then for --seconds keeps --busy of them asking in a loop while the rest stay idle. Prints
`held N` and `busy_rps R`. Exits non-zero if a connection fails or an answer is not 200.
"""

import argparse
import asyncio
import sys
import time

REQUEST = b"GET /1k HTTP/1.1\r\nHost: bench.local\r\n\r\n"


async def ask(reader, writer):
    writer.write(REQUEST)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"answered {status.decode()}, not 200")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--busy", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--ready", required=True, help="file to create once all are held")
    a = p.parse_args()

    conns = []
    sem = asyncio.Semaphore(200)  # connect in batches, not 10,000 SYNs at once

    async def open_one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", a.port), 10)
            await asyncio.wait_for(ask(r, w), 10)
            conns.append((r, w))

    await asyncio.gather(*(open_one() for _ in range(a.connections)))
    print(f"held {len(conns)}", flush=True)
    open(a.ready, "w").close()

    done = 0
    deadline = time.monotonic() + a.seconds

    async def busy(r, w):
        nonlocal done
        while time.monotonic() < deadline:
            await asyncio.wait_for(ask(r, w), 10)
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(busy(r, w) for r, w in conns[: a.busy]))
    print(f"busy_rps {done / (time.monotonic() - start):.0f}", flush=True)
    # Every idle connection must still be open and served after the busy period.
    await asyncio.gather(*(asyncio.wait_for(ask(r, w), 10) for r, w in conns[a.busy:][:100]))
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001 - the message is the report
        print(f"idle_clients: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
