"""The workbook's SHA-256, computed from the bytes as they are written (no second read of the file).

``zipfile`` writes each entry's header, then its data, then seeks back to fill the header's sizes and
CRC. Bytes that are rewritten cannot be hashed as they go, so :class:`HashingFile` tells ``zipfile``
it cannot seek: the zip then carries each entry's sizes and CRC in a data descriptor after the
entry (APPNOTE 4.3.9, bit 3 of the flags), which every reader the tests use handles, and every
byte is written exactly once, in order, through the hash.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import BinaryIO


class HashingFile(io.RawIOBase):
    """A write-only, append-only file whose :attr:`sha256` is the digest of everything written."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()
        self._position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        raise io.UnsupportedOperation("HashingFile is append-only: every byte is hashed once, as written")

    def tell(self) -> int:
        return self._position

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data)
        self._raw.write(view)
        self._hash.update(view)
        self._position += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        if not self._raw.closed:
            self._raw.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()
            finally:
                self._raw.close()

    @property
    def size(self) -> int:
        return self._position

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes written so far."""
        return self._hash.hexdigest()


def hex_to_base64(hex_digest: str) -> str:
    """S3's checksum headers carry the digest in Base64; the ledger and metadata in hex (as ``sha256sum``)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()
