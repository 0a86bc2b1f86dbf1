"""What ``send_file`` accepts (bytes, a path or a binary file object), read into the one
multipart file part the upload sends, off the event loop and never past the service's limit."""

from __future__ import annotations

import asyncio
import mimetypes
import os
from pathlib import Path
from typing import IO

from ._protocol import MAX_FILE_BYTES, FilePart

__all__ = ["FileInput", "read_file_part"]

FileInput = bytes | str | os.PathLike[str] | IO[bytes]
"""What ``send_file`` takes: the bytes, a path, or a file object opened in binary mode."""


async def read_file_part(file: FileInput, filename: str | None) -> FilePart:
    """Read what ``send_file`` was given, refusing more than the service accepts unread.

    >>> asyncio.run(read_file_part(b"%PDF-1.7", "invoice.pdf")).content_type
    'application/pdf'
    """
    if isinstance(file, bytes):
        content, name = file, filename or "file"
    elif isinstance(file, (str, os.PathLike)):
        path = Path(file)
        size = (await asyncio.to_thread(path.stat)).st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(
                f"{path} has {size} bytes; the Market accepts at most {MAX_FILE_BYTES}"
            )
        content, name = await asyncio.to_thread(path.read_bytes), filename or path.name
    elif hasattr(file, "read"):
        content = await asyncio.to_thread(file.read, MAX_FILE_BYTES + 1)
        if not isinstance(content, bytes):
            raise TypeError("file must be opened in binary mode")
        name = filename or Path(str(getattr(file, "name", "file"))).name
    else:
        raise TypeError(f"file must be bytes, a path or a binary file, not {type(file).__name__}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FilePart(name, content, content_type)
