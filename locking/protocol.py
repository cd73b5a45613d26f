"""RESP encoding of the few commands the lock sends, built once per call and reused per node."""

from __future__ import annotations

from collections.abc import Iterable


def encode_command(args: Iterable[bytes | str | int]) -> bytes:
    """Return ``args`` as one RESP array of bulk strings, ready for ``sendall``."""
    parts: list[bytes] = []
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"*%d\r\n%b" % (len(parts), b"".join(parts))
