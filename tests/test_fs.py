"""The one atomic write and the one atomic folder (pipeline/fs.py): a file or folder with its
final name is complete, whatever stops the writer."""
from __future__ import annotations

import pytest

from pipeline.fs import building, write_atomic


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.png"
    write_atomic(str(path), b"first")
    assert path.read_bytes() == b"first"

    def dies(tmp: str) -> None:  # a writer killed half-way
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(str(path), dies)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    seen = []
    write_atomic(str(path), lambda tmp: (seen.append(tmp), open(tmp, "wb").write(b"second")))
    assert seen[0].endswith(".png") and path.read_bytes() == b"second"  # writers see the extension


def test_a_folder_is_built_whole_or_not_at_all_and_never_replaces_unasked(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with building(out) as tmp:
            (tmp / "x").write_text("1")
            raise RuntimeError("killed")
    assert not out.exists()
    with building(out) as tmp:  # the attempt's leftovers are cleared
        assert not list(tmp.iterdir())
        (tmp / "y").write_text("2")
    assert [p.name for p in out.iterdir()] == ["y"]
    with pytest.raises(OSError):
        with building(out) as tmp:
            (tmp / "z").write_text("3")
    assert [p.name for p in out.iterdir()] == ["y"]  # a folder with something in it stays
    with building(out, replace=True) as tmp:
        (tmp / "z").write_text("3")
    assert [p.name for p in out.iterdir()] == ["z"]
