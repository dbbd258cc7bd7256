"""What goes over the wire: request bodies, pre-built HTTP/1.1 requests, a minimal client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any

from bench.serving.store import Dataset

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 60.0  # seconds for one request outside the load loop (sanity, bulk)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Payloads:
    path: str
    single: list[bytes]  # one JSON body per pool row
    bulk: bytes


def build_payloads(protocol: str, data: Dataset, model_name: str = "") -> Payloads:
    """Bodies for our ``/predict`` (``protocol="predict"``), Open Inference Protocol v2
    infer of ``model_name`` (``"v2"``: one FP64 tensor per column) or MLflow's
    ``/invocations``."""
    columns = data.columns
    if protocol == "v2":
        single = [_v2_body(columns, [row]) for row in data.single_rows]
        return Payloads(f"/v2/models/{model_name}/infer", single, _v2_body(columns, data.bulk_rows))
    if protocol == "predict":
        single = [
            json.dumps(dict(zip(columns, row, strict=True))).encode() for row in data.single_rows
        ]
        bulk = json.dumps(
            {"records": [dict(zip(columns, row, strict=True)) for row in data.bulk_rows]}
        ).encode()
        return Payloads("/predict", single, bulk)
    single = [
        json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()
        for row in data.single_rows
    ]
    bulk = json.dumps({"dataframe_split": {"columns": columns, "data": data.bulk_rows}}).encode()
    return Payloads("/invocations", single, bulk)


def _v2_body(columns: list[str], rows: list[list[float]]) -> bytes:
    inputs = [
        {"name": name, "shape": [len(rows)], "datatype": "FP64", "data": [r[i] for r in rows]}
        for i, name in enumerate(columns)
    ]
    return json.dumps({"inputs": inputs}).encode()


def http_request(port: int, path: str, body: bytes) -> bytes:
    """A complete pre-built HTTP/1.1 keep-alive POST."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    return head + body


def labels_from(protocol: str, body: bytes) -> list[Any]:
    """The predicted labels in a response body of /predict, v2 infer or /invocations."""
    decoded = json.loads(body)
    if protocol == "v2":
        return list(decoded["outputs"][0]["data"])
    if protocol == "predict":
        if "predictions" in decoded:
            return [p["label"] for p in decoded["predictions"]]
        return [decoded["prediction"]["label"]]
    predictions = decoded["predictions"]
    return [p if not isinstance(p, dict) else next(iter(p.values())) for p in predictions]


@dataclass(frozen=True)
class _Head:
    status: int
    length: int  # -1: no Content-Length
    chunked: bool
    close: bool


def _parse_head(head: bytes) -> _Head:
    status = int(head[9:12])
    length = -1
    chunked = close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    return _Head(status, length, chunked, close)


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    Sends pre-built request bytes and reads one response: status line, headers,
    Content-Length or chunked body. Reconnects when the server closes the connection.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        try:
            writer.write(data)
            if len(data) > 65536:
                await writer.drain()
            head = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = await self._read_body(reader, head)
        except BaseException:
            await self.close()
            raise
        # A body without a length ends when the server closes the connection.
        if head.close or (not head.chunked and head.length < 0):
            await self.close()
        return head.status, body

    @classmethod
    async def _read_body(cls, reader: asyncio.StreamReader, head: _Head) -> bytes:
        if head.chunked:
            return await cls._read_chunked(reader)
        if head.length >= 0:
            return await reader.readexactly(head.length)
        return await reader.read()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers, then the final CRLF
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
