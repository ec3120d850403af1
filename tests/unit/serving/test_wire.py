"""steps.serving.wire: one socket write per response, same bytes in the same order, on a real
uvicorn
server with the protocol (and on a recording transport, to count the writes)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from steps.serving.wire import CoalescingTransport, OneWriteHttpToolsProtocol
from tests.support import free_port


class RecordingTransport:
    """The part of asyncio.Transport CoalescingTransport uses, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_loop_iteration_go_out_as_one():
    async def main() -> RecordingTransport:
        real = RecordingTransport()
        wrapped = CoalescingTransport(real, asyncio.get_running_loop())
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(b"body")
        assert real.writes == []  # not yet: at the end of this iteration
        await asyncio.sleep(0)
        wrapped.write(b"next")
        await asyncio.sleep(0)
        assert wrapped.get_extra_info("peername") == "info:peername"
        return real

    assert asyncio.run(main()).writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"]


def test_close_flushes_first_and_abort_drops():
    async def main() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        a, b = CoalescingTransport(closed, loop), CoalescingTransport(aborted, loop)
        a.write(b"last answer")
        a.close()
        b.write(b"never sent")
        b.abort()
        await asyncio.sleep(0)  # the scheduled flushes find nothing left
        return closed, aborted

    closed, aborted = asyncio.run(main())
    assert closed.writes == [b"last answer"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


async def app(scope, receive, send):
    """Echo the path; /stream answers in three chunks, /big with 1 MiB."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a" * 10, b"b" * 10):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"c" * 10})
        return
    body = b"x" * (1 << 20) if scope["path"] == "/big" else scope["path"].encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server_port():
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=OneWriteHttpToolsProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_pipelined_requests_are_answered_in_order_then_close(server_port):
    first = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = first + b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = exchange(server_port, raw)
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert reply.index(b"\r\n\r\n/one") < reply.index(b"\r\n\r\n/two")
    assert reply.endswith(b"/two")


def test_chunked_and_large_responses_arrive_whole(server_port):
    stream = exchange(server_port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert stream.endswith(
        b"a\r\n"
        + b"a" * 10
        + b"\r\na\r\n"
        + b"b" * 10
        + b"\r\na\r\n"
        + b"c" * 10
        + b"\r\n0\r\n\r\n"
    )
    big = exchange(server_port, b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert big.split(b"\r\n\r\n", 1)[1] == b"x" * (1 << 20)
