"""Local paths and pyarrow filesystem URIs (s3://, gs://) behind one small interface, and the one
atomic write every output of the project goes through."""
from __future__ import annotations

import os
import uuid
from typing import Callable

import pyarrow.fs as pafs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def isdir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _temporary(path: str) -> str:
    """A name beside `path` that no other writer uses, keeping its extension (writers such as
    Pillow and soundfile pick the format by it)."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:8]}{ext}")


def write_atomic(path: str, data: bytes | Callable[[str], object], fs: pafs.FileSystem | None = None) -> str:
    """Write `path` so that a file of that name is always complete, whatever kills the writer:
    under a temporary name in the same folder, then renamed. `data` is the bytes, or a function
    that writes the file at the path it is given (an image's `save`, a figure's `savefig`). `fs`:
    a pyarrow filesystem `path` lives on (default: the local disk). Returns `path`."""
    if fs is not None and not isinstance(fs, pafs.LocalFileSystem):
        if callable(data):  # made locally first, then copied up in one stream
            local = _temporary(os.path.join(os.environ.get("TMPDIR", "/tmp"), os.path.basename(path)))
            try:
                data(local)
                with open(local, "rb") as f:
                    data = f.read()
            finally:
                if os.path.exists(local):
                    os.remove(local)
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
        return path
    tmp = _temporary(path)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path: str, value, indent: int | None = 1) -> str:
    """`value` as JSON at `path`, atomically (a manifest, a run's record)."""
    import json

    return write_atomic(path, json.dumps(value, indent=indent).encode())
