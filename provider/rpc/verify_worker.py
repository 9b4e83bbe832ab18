"""The signature-verification worker process (see :mod:`provider.rpc.verifier`).

Reads length-prefixed msgpack batches of ``[issuer_key, signing_input, signature]`` on stdin and
answers each with one byte per item (1 = valid) on stdout, in order. It holds no secrets and no
state: it only runs the Ed25519 check, which is a pure function of the bytes it is given.
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

import msgpack

from contract.claims import signature_valid

_LENGTH = struct.Struct("<I")
MAX_BATCH_BYTES = 64 * 1024 * 1024


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _verdict(job: object) -> int:
    if not (isinstance(job, list) and len(job) == 3 and all(isinstance(x, bytes) for x in job)):
        return 0
    return 1 if signature_valid(*job) else 0


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _read_exactly(stdin, _LENGTH.size)
        if header is None:
            return
        (size,) = _LENGTH.unpack(header)
        if size > MAX_BATCH_BYTES:
            return
        body = _read_exactly(stdin, size)
        if body is None:
            return
        try:
            jobs = msgpack.unpackb(body, raw=False)
        except Exception:
            jobs = None
        verdicts = bytes(_verdict(job) for job in jobs) if isinstance(jobs, list) else b""
        stdout.write(_LENGTH.pack(len(verdicts)) + verdicts)
        stdout.flush()


if __name__ == "__main__":
    main()
