"""One GPU host's node server, for the multi-host test and benchmark: the node's real HTTP server (the one
``atoma-ops node serve`` runs) over its own store under ``--home``, on the stub engine — the stand-in for the vLLM
a GPU host would run, which cannot run here.

    python -m atoma_ops.testing.node_host --home HOME --node node-1 --host 10.200.1.2

Prints one JSON line ``{"url": …, "address": …}`` once it listens, then serves until SIGTERM or SIGINT, and records
the requests in progress before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys


async def _serve(home: str, node: str, host: str) -> None:
    from atoma_ops.serving.node import NodeService
    from atoma_ops.serving.server import loopback_server
    from atoma_ops.testing.stub_engine import StubEngine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = await NodeService.open(home, node, StubEngine())
    try:
        async with loopback_server(service, host=host) as url:
            print(json.dumps({"url": url, "address": service.address}), flush=True)
            await stop.wait()
    finally:
        await service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="the host's localnet home (its node store lives under it)")
    parser.add_argument("--node", required=True, help="the node's wallet alias")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (a free port is chosen)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.home, args.node, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
