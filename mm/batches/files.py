"""The Batch API's files: stored in a directory (``MM_FILES_DIR``), one data file and one JSON
description per file, each written whole (temporary name, then rename) so a crash leaves no half file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PURPOSES = ("batch", "batch_output")
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")


class FileStore:
    """Files kept under ``root``: ``<id>.data`` holds the bytes, ``<id>.json`` the OpenAI file object."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _paths(self, file_id: str) -> tuple[Path, Path]:
        if not FILE_ID.match(file_id):  # never a path from the request
            raise KeyError(file_id)
        return self.root / f"{file_id}.data", self.root / f"{file_id}.json"

    def _write(self, path: Path, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def create(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store ``data`` and return its OpenAI file object (``id`` is ``file-<hex>``)."""
        file_id = "file-" + secrets.token_hex(12)
        data_path, meta_path = self._paths(file_id)
        self._write(data_path, data)
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "expires_at": None, "filename": filename, "purpose": purpose, "status": "processed",
                "status_details": None}
        self._write(meta_path, json.dumps(meta).encode())
        return meta

    def get(self, file_id: str) -> dict[str, Any] | None:
        """The file object of ``file_id``; None if there is no such file."""
        try:
            _, meta_path = self._paths(file_id)
            return dict(json.loads(meta_path.read_bytes()))
        except (KeyError, FileNotFoundError):
            return None

    def content(self, file_id: str) -> bytes | None:
        """The bytes of ``file_id``; None if there is no such file."""
        try:
            data_path, _ = self._paths(file_id)
            return data_path.read_bytes()
        except (KeyError, FileNotFoundError):
            return None

    def delete(self, file_id: str) -> bool:
        """Remove ``file_id``; False if there was no such file."""
        if self.get(file_id) is None:
            return False
        data_path, meta_path = self._paths(file_id)
        meta_path.unlink(missing_ok=True)  # first: a half-deleted file is gone, not corrupt
        data_path.unlink(missing_ok=True)
        return True

    def all(self) -> Iterator[dict[str, Any]]:
        """Every file object, newest first."""
        if not self.root.is_dir():
            return iter(())
        found = (self.get(p.stem) for p in self.root.glob("file-*.json"))
        return iter(sorted((f for f in found if f), key=lambda f: (f["created_at"], f["id"]), reverse=True))
