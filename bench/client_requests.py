"""What an agent's HTTP client spends on each request: client CPU per request of
`corral.client.http.Client` (httpx underneath, as the agent and the hollow nodes use it),
and, as the floor, of the same request written and read on a raw asyncio stream.

The server is a minimal HTTP/1.1 responder in a child process (it answers every request
with `{}` on a kept-alive connection), so the figure is the client's CPU alone
(`time.process_time` of this process over `--requests` sequential requests). It says
whether `sniffio` is importable: without it httpcore searches `sys.path` for it on every
lock and every response it closes (pyproject.toml pins it for that reason); to see the
difference, run once as installed and once after `pip uninstall sniffio`.

Run: `.venv/bin/python bench/client_requests.py --runs 5`. Prints a table and, with
`--json`, one JSON object (medians over the runs, and each run).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from corral.client.config import ClientConfig
from corral.client.http import Client

_RESPONDER = r"""
import asyncio, sys

async def answer(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 2\r\n\r\n{}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def corral_client(port: int, requests: int) -> float:
    async with Client(ClientConfig(addr=f"http://127.0.0.1:{port}", token="t")) as client:
        for _ in range(100):  # the connection and the first requests' imports
            await client.request("GET", "/v1/nodes/n/instances")
        start = time.process_time()
        for _ in range(requests):
            await client.request("GET", "/v1/nodes/n/instances")
        return (time.process_time() - start) / requests


async def raw_stream(port: int, requests: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (b"GET /v1/nodes/n/instances HTTP/1.1\r\nhost: 127.0.0.1\r\n"
               b"authorization: Bearer t\r\n\r\n")

    async def one() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        json.loads(await reader.readexactly(length))

    for _ in range(100):
        await one()
    start = time.process_time()
    for _ in range(requests):
        await one()
    seconds = (time.process_time() - start) / requests
    writer.close()
    return seconds


def run_once(requests: int) -> dict[str, float]:
    responder = subprocess.Popen([sys.executable, "-c", _RESPONDER], stdout=subprocess.PIPE,
                                 text=True)
    try:
        assert responder.stdout is not None
        port = int(responder.stdout.readline())
        return {"client_us": asyncio.run(corral_client(port, requests)) * 1e6,
                "floor_us": asyncio.run(raw_stream(port, requests)) * 1e6}
    finally:
        responder.kill()
        responder.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [run_once(args.requests) for _ in range(args.runs)]
    client = statistics.median(r["client_us"] for r in runs)
    floor = statistics.median(r["floor_us"] for r in runs)
    result: dict[str, Any] = {
        "sniffio_installed": importlib.util.find_spec("sniffio") is not None,
        "requests": args.requests, "client_us": round(client, 1),
        "floor_us": round(floor, 1), "ratio_to_floor": round(client / floor, 2),
        "runs": [{k: round(v, 1) for k, v in r.items()} for r in runs]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"sniffio installed: {result['sniffio_installed']}")
        print(f"client CPU per request: Client {client:.0f} us, raw stream {floor:.0f} us "
              f"({client / floor:.2f}x the floor), medians of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
