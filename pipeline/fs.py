"""Local paths and pyarrow filesystem URIs (s3://, gs://) behind one small interface, and the one
atomic write every output of the project goes through.

On an object store there is no rename and no lock: an object appears whole when its upload
completes, so a file is written straight to its name, and a folder of outputs is finished when its
manifest, written last, is there (every stage reads that first). The S3 endpoint and credentials
come the standard AWS way, from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION) or the node's role; pyarrow reads the credentials itself but not
AWS_ENDPOINT_URL, which `filesystem` passes on as its endpoint_override.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import UserError

_S3: dict[tuple, pafs.FileSystem] = {}


def is_remote(uri: str) -> bool:
    """A pyarrow filesystem URI other than the local disk (s3://, gs://, ...)."""
    return "://" in uri and not uri.startswith("file://")


def s3_endpoint() -> str | None:
    """The S3 endpoint the environment names (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL), as boto3 reads it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3() -> pafs.FileSystem:
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key = (endpoint, region)
    if key not in _S3:
        kwargs: dict = {"connect_timeout": 10}
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
            region = region or "us-east-1"  # an S3-compatible server: no region to look up
        if region:
            kwargs["region"] = region
        _S3[key] = pafs.S3FileSystem(**kwargs)
    return _S3[key]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(the pyarrow filesystem, the path on it) of a local path or a URI. s3:// goes to the
    environment's endpoint (AWS_ENDPOINT_URL) unless the URI names one (?endpoint_override=)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    if uri.startswith("s3://") and "?" not in uri:
        return _s3(), uri[len("s3://"):].rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URI (os.path.join would break neither, but says less)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def ray_storage(uri: str) -> dict:
    """RunConfig's storage arguments for a folder of Ray Train / Tune runs: a local path as it is;
    on an object store the path on it with the filesystem, so that the endpoint and credentials
    are this project's (Ray's own URI parsing would go to AWS for an s3:// on another server)."""
    if not is_remote(uri):
        return {"storage_path": uri}
    fs, path = filesystem(uri)
    return {"storage_path": path, "storage_filesystem": fs}


# What an S3 server's refusal means, from the error pyarrow raises ("AWS Error CODE during ...").
_S3_ERRORS = {
    "NO_SUCH_BUCKET": "the bucket does not exist",
    "ACCESS_DENIED": "access denied: the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the node's role) "
                     "are refused or lack permission",
    "INVALID_ACCESS_KEY_ID": "the access key (AWS_ACCESS_KEY_ID) is unknown to the server",
    "SIGNATURE_DOES_NOT_MATCH": "the secret key (AWS_SECRET_ACCESS_KEY) does not match the access key",
    "NETWORK_CONNECTION": "cannot reach the server",
    "MISSING_AUTHENTICATION_TOKEN": "no credentials were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
}


def store_error(error: BaseException, uri: str | None = None) -> str | None:
    """One line saying why an object store refused, when `error` is such a refusal; else None."""
    text = str(error)
    match = re.search(r"AWS Error ([A-Z_]+)", text)
    if match is None:
        if "curlCode: 7" in text or "Couldn't connect" in text:
            code = "NETWORK_CONNECTION"
        else:
            return None
    else:
        code = match.group(1)
    where = re.search(r"in bucket '([^']+)'", text)
    what = _S3_ERRORS.get(code, code.lower().replace("_", " "))
    endpoint = s3_endpoint() or "AWS S3"
    place = uri or (f"s3://{where.group(1)}" if where else "the object store")
    return f"{place}: {what} ({code} from {endpoint})"


def check_store(uri: str, what: str = "workdir") -> None:
    """A URI's bucket exists and takes a write and a delete from these credentials; else one line."""
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    probe = f"{path}/.write-check-{uuid.uuid4().hex[:12]}"
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise UserError(f"{what} {uri}: the bucket '{bucket}' does not exist at "
                            f"{s3_endpoint() or 'the default endpoint'} (create it first)")
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except OSError as e:
        raise UserError(f"{what} {store_error(e, uri) or f'{uri}: {e}'}") from None
def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def isdir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


READ_BUFFER = 4 << 20  # bytes an object-store stream fetches per request (tarfile reads 10 KiB at a time)


def open_read(uri: str):
    """A buffered input stream of a local path or an object-store URI (no decompression)."""
    fs, path = filesystem(uri)
    return fs.open_input_stream(path, compression=None, buffer_size=READ_BUFFER)


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
        # An object store has no rename, and needs none: an object appears whole when its upload
        # completes, or not at all.
        if callable(data):  # made locally first, then copied up in one stream
            local = _temporary(os.path.join(os.environ.get("TMPDIR", "/tmp"), os.path.basename(path)))
            try:
                data(local)
                with open(local, "rb") as f:
                    data = f.read()
            finally:
                if os.path.exists(local):
                    os.remove(local)
        with fs.open_output_stream(path) as f:
            f.write(data)
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


@contextlib.contextmanager
def building_output(uri: str) -> Iterator[str]:
    """Where to write a folder of outputs that is finished only when its manifest, written last,
    is there: locally `building(uri, replace=True)` (a temporary folder renamed into place); on an
    object store, which renames nothing, `uri` itself, emptied first (an unfinished attempt's
    objects, or the outputs being redone)."""
    if not is_remote(uri):
        with building(uri, replace=True) as tmp:
            yield str(tmp)
        return
    remove_tree(uri)
    yield uri


def write_json_atomic(path: str, value, indent: int | None = 1) -> str:
    """`value` as JSON at `path` (a local path or a URI), atomically (a manifest, a run's record)."""
    fs, where = filesystem(path)
    write_atomic(where, json.dumps(value, indent=indent).encode(), fs)
    return path


def read_json(path: str) -> dict | None:
    """The JSON at `path` (a local path or a URI); None when there is none."""
    fs, where = filesystem(path)
    try:
        return json.loads(read_bytes(fs, where))
    except FileNotFoundError:
        return None


def path_exists(path: str) -> bool:
    fs, where = filesystem(path)
    return exists(fs, where)


def remove_tree(path: str) -> None:
    """A folder and everything under it (a local path or a URI); nothing when it is not there."""
    fs, where = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        shutil.rmtree(where, ignore_errors=True)
        return
    if exists(fs, where):
        fs.delete_dir_contents(where, missing_dir_ok=True)
        with contextlib.suppress(OSError, FileNotFoundError):
            fs.delete_dir(where)


def names(path: str) -> list[str]:
    """The names of the files directly in a folder (a local path or a URI), sorted; [] when none."""
    fs, where = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(where, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def upload(local: str | os.PathLike, uri: str) -> None:
    """Every file of a local folder to the same names under `uri` (a local path or a URI)."""
    fs, where = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        shutil.copytree(local, where, dirs_exist_ok=True)
        return
    pafs.copy_files(str(local), where, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def staged(uri: str) -> Iterator[str]:
    """A folder to write outputs in: `uri` itself when local; on an object store a local temporary
    folder whose files are uploaded under `uri` when the body returns (writers such as Pillow,
    soundfile, PyAV and matplotlib write local files)."""
    if not is_remote(uri):
        os.makedirs(uri, exist_ok=True)
        yield uri
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vqvae-out-") as tmp:
        yield tmp
        upload(tmp, uri)
