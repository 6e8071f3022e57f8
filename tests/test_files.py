"""Atomic file writes: the old content or the new, never a mix, and no temporary file left behind."""

from __future__ import annotations

import json
import os

import pytest

from hieros.files import write_atomic, write_json_atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "scores.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and path.read_text().endswith("\n")
    write_atomic(path, b"raw")
    assert path.read_bytes() == b"raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    write_atomic(path, "old: 1\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new: 2\n")
    assert path.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
