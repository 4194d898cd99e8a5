"""An open-loop HTTP load generator: requests leave on a clock, not when a reply arrives.

A stalled server therefore cannot hide its latency (no coordinated omission): each
request's latency is measured from the moment it was scheduled to leave.

    python bench/openloop.py --port P --rate 2000 --seconds 10 --requests FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from pathlib import Path


def load_requests(path: Path, host: str) -> list[bytes]:
    """Raw HTTP/1.1 requests from a wrk-style requests file (see common.make_requests)."""
    out = []
    for line in path.read_text().splitlines():
        method, target, bearer, nonce, body = line.split("\t", 4)
        raw = body.encode()
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\n"
            f"X-Action-Nonce: {nonce}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n"
        )
        out.append(head.encode() + raw)
    return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run(
    port: int, rate: float, seconds: float, requests: list[bytes], connections: int
) -> dict[str, object]:
    total = min(int(rate * seconds), len(requests))
    queue: deque[tuple[float, bytes]] = deque()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wake = asyncio.Event()
    done = 0

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while done < total:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            scheduled, raw = queue.popleft()
            # From the scheduled moment when the request waited for a connection; from
            # now if a timer fired early (never a latency below the server's own).
            sent = min(scheduled, time.perf_counter())
            writer.write(raw)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - sent)
            statuses[status] = statuses.get(status, 0) + 1
            done += 1
            if done >= total:
                wake.set()
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter() + 0.2
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            # uvloop's timers have millisecond resolution and may fire before `due`; the
            # worker then times the request from when it really left (sleeping again
            # for the rest would spin this process on the CPU that Redis runs on).
            await asyncio.sleep(delay)
        queue.append((due, requests[i]))
        wake.set()
    await asyncio.wait_for(asyncio.gather(*workers), timeout=seconds + 60)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "sent": total,
        "achieved_rps": total / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": latencies[-1] * 1000,
        "statuses": statuses,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--requests", type=Path, required=True)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    reqs = load_requests(args.requests, f"127.0.0.1:{args.port}")
    result = asyncio.run(run(args.port, args.rate, args.seconds, reqs, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
