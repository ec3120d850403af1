"""uvicorn's httptools HTTP/1.1 protocol, writing each response to its socket in one call.

In: nothing but uvicorn's own settings (``--http steps.serving.wire:OneWriteHttpToolsProtocol``;
``steps.serve`` selects it). Out: the same bytes on the wire, in the same order, as
``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``; no I/O of its own, no MLflow.

Why (measured, docs/api.md "Where the time goes"): uvicorn writes a response's status line
and headers, then its body, as two ``transport.write`` calls, i.e. two ``send`` system calls
and two TCP segments (uvloop sets TCP_NODELAY). For a single-row prediction the answer is a
few hundred bytes, and the second system call cost the worker as much as validating the
request; the client pays a second wake-up too. ``CoalescingTransport`` keeps what a
connection writes during one event-loop iteration and hands it to the socket at the end of
that iteration, joined, so a response written in one go (ours always is) is one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A connection's transport whose writes within one loop iteration go out as one.

    Everything but ``write``, ``close`` and ``abort`` is the real transport's (flow control,
    peer address, ``is_closing``). Order is kept: one buffer per connection, flushed by one
    ``call_soon`` callback, and before ``close``.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return  # already flushed by close()
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()  # a response written just before close must still go out
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` on a ``CoalescingTransport``: one socket write per response."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
