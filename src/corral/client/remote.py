"""The client's end of `corral exec`: a websocket to the server's
`/v1/instances/{id}/exec` (httpx has no websocket client; this uses the `websockets`
package), speaking the frames of `corral/exec_protocol.py`.

`open_exec` connects and sends the request; the `ExecSession` it yields sends stdin,
end-of-input and window sizes, and `output()` gives `(channel, bytes)` until the command's
exit code, which `exit_code` then holds. A refusal (close code 4000 + status) raises
`ApiError` with the server's or the agent's message; a lost connection `Unreachable`; a
server certificate that does not verify `UntrustedServer`, as the HTTP client does.

Neighbours: `cli/exec.py` (the terminal), `server/exec.py` (the relay).
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from corral.client.config import ClientConfig
from corral.client.http import ApiError, Unreachable, UntrustedServer, tls_context
from corral.exec_protocol import STDIN, ExecRequest, data_frame, split_frame, status_of

__all__ = ["ExecSession", "exec_url", "open_exec"]


def exec_url(addr: str, instance_id: str) -> str:
    """`https://host:7070` -> `wss://host:7070/v1/instances/ID/exec` (and http -> ws)."""
    base = addr.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return f"{base}/v1/instances/{instance_id}/exec"


class ExecSession:
    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self.exit_code: int | None = None

    # Sending to a connection the other side has closed is no error of its own: `output`
    # reports why it closed (a refusal, the command's end, a lost server).

    async def send_stdin(self, data: bytes) -> None:
        if data:
            with contextlib.suppress(ConnectionClosed):
                await self._conn.send(data_frame(STDIN, data))

    async def send_eof(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._conn.send(json.dumps({"type": "eof"}))

    async def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._conn.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(channel, data) frames until the command exits (then `exit_code` is set)."""
        error = ""
        try:
            async for frame in self._conn:
                if isinstance(frame, bytes):
                    yield split_frame(frame)
                    continue
                message = json.loads(frame)
                if message.get("type") == "exit":
                    self.exit_code = int(message["code"])
                    return
                if message.get("type") == "error":
                    error = str(message.get("message", ""))
        except ConnectionClosed:
            pass
        status = status_of(self._conn.close_code)
        if status is not None:
            raise ApiError(status, error or self._conn.close_reason or f"refused ({status})")
        raise Unreachable(error or f"the connection to the server closed before the command "
                                   f"ended (code {self._conn.close_code})")


@asynccontextmanager
async def open_exec(config: ClientConfig, instance_id: str, request: ExecRequest
                    ) -> AsyncIterator[ExecSession]:
    url = exec_url(config.addr, instance_id)
    tls: ssl.SSLContext | None = tls_context(config.cacert) if url.startswith("wss://") \
        else None
    headers = {"authorization": f"Bearer {config.token}"} if config.token else {}
    try:
        conn = await connect(url, additional_headers=headers, ssl=tls, open_timeout=15,
                             max_size=None, compression=None)
    except ssl.SSLCertVerificationError as exc:
        raise UntrustedServer(f"the corral server at {config.addr} has a certificate that "
                              f"does not verify ({exc.verify_message}); set CORRAL_CACERT "
                              "to the cluster CA") from exc
    except InvalidStatus as exc:
        raise ApiError(exc.response.status_code,
                       exc.response.body.decode(errors="replace")[:200] if exc.response.body
                       else f"the server refused the websocket ({exc.response.status_code})"
                       ) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise Unreachable(f"cannot reach the corral server at {config.addr} "
                          f"({exc or type(exc).__name__}); is `corral up` running? "
                          "(CORRAL_ADDR)") from exc
    async with conn:
        with contextlib.suppress(ConnectionClosed):  # refused at once: `output` says why
            await conn.send(request.to_text())
        yield ExecSession(conn)
