"""The Python SDK's follower for the runtimes benchmark (`cargo bench
--bench runtimes`): opens COUNT subscriptions to a namespace and, in each
one's callback, prints `<index> <revision>`.

    python follow.py http://127.0.0.1:50051 payments 100
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import policyhub


async def follow(server: str, namespace: str, count: int) -> None:
    def on_change(index: int) -> Callable[[policyhub.State], None]:
        def printed(state: policyhub.State) -> None:
            print(index, state.revision, flush=True)

        return printed

    await asyncio.gather(
        *(policyhub.Subscription(server, namespace).run(on_change(index)) for index in range(count))
    )


if __name__ == "__main__":
    server, namespace, count = sys.argv[1:]
    asyncio.run(follow(server, namespace, int(count)))
