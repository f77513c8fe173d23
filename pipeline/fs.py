"""Local paths and pyarrow filesystem URIs (s3://, gs://) behind one small interface, and the one
atomic write every output of the project goes through."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

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


@contextlib.contextmanager
def building(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A local folder made whole or not at all: the body fills the temporary folder it is given
    (beside `path`, left over from a killed attempt or not: emptied first), which becomes `path`
    when the body returns. An empty `path` is taken over; a folder with something in it only
    with `replace` (an unfinished output, or one being redone), else it is an error."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if path.is_dir():
        if replace:
            shutil.rmtree(path)
        else:
            path.rmdir()  # OSError when it holds anything: never thrown away unasked
    tmp.rename(path)


def write_json_atomic(path: str, value, indent: int | None = 1) -> str:
    """`value` as JSON at `path`, atomically (a manifest, a run's record)."""
    import json

    return write_atomic(path, json.dumps(value, indent=indent).encode())
