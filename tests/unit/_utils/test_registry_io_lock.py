"""Registry, atomic writes and the run lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compress._utils.io import atomic_open, atomic_write_json, read_json, sha256_file
from compress._utils.lock import run_lock
from compress._utils.registry import Registry
from compress.errors import RunLocked, UnknownNameError


def test_registry_register_get_and_did_you_mean():
    reg: Registry[int] = Registry("widget")
    reg.register("round")(1)
    reg.register("square")(2)
    assert reg.get("round") == 1
    assert reg.names("s*") == ["square"]
    with pytest.raises(UnknownNameError, match=r"unknown widget 'rund' \(did you mean 'round'\?\); valid: round, square"):
        reg.get("rund")


def test_registry_duplicate_raises():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(2)


def test_registry_unavailable_says_what_to_install():
    reg: Registry[int] = Registry("runtime")
    reg.mark_unavailable("tensorrt", "pip install tensorrt")
    with pytest.raises(UnknownNameError, match="not available here: pip install tensorrt"):
        reg.get("tensorrt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(p, "w") as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert read_json(p) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_atomic_write_survives_kill(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"old")
    code = (
        "import os, sys\n"
        "from compress._utils.io import atomic_open\n"
        f"with atomic_open({str(p)!r}) as f:\n"
        "    f.write(b'x' * 1000)\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert p.read_bytes() == b"old"


def test_sha256_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_lock_refuses_second_run_and_releases(tmp_path):
    with run_lock(tmp_path):
        # a live holder (this process) blocks a second holder
        with pytest.raises(RunLocked, match="another compress run"), run_lock(tmp_path):
            pass
    assert not (tmp_path / ".lock").exists()
    with run_lock(tmp_path):
        pass


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    import json
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
