"""A raylet's half of `rayr logs`: listing and reading its log directory, never outside it."""

from __future__ import annotations

from rayr.gcs import control, logs


def test_listing_names_sizes_and_worker_pids(tmp_path):
    (tmp_path / "raylet-ab.log").write_text("raylet\n")
    (tmp_path / "worker-0123.log").write_text("hello\n")
    listing = {e["name"]: e for e in logs._listing(str(tmp_path), {"0123": 4242})}
    assert listing["worker-0123.log"]["pid"] == 4242 and listing["worker-0123.log"]["size"] == 6
    assert "pid" not in listing["raylet-ab.log"]
    assert logs._listing(str(tmp_path / "missing"), {}) == []


def test_reading_from_an_offset_from_the_end_and_past_the_end(tmp_path):
    (tmp_path / "w.log").write_bytes(b"0123456789")

    def read(offset: int, limit: int = 100) -> bytes:
        return logs._read(str(tmp_path), control.ReadLog("w.log", offset, limit, "r"))

    assert read(0) == b"ok:10\n0123456789"
    assert read(4, 3) == b"ok:7\n456"
    assert read(-3) == b"ok:10\n789"
    assert read(-100) == b"ok:10\n0123456789"  # more than the file: all of it
    assert read(50) == b"ok:10\n"  # past the end: nothing yet (a follower waits)


def test_only_plain_names_in_the_log_directory(tmp_path):
    (tmp_path / ".hidden").write_text("x")
    for name in ("../secret", "/etc/passwd", ".hidden", "", "sub/w.log"):
        answer = logs._read(str(tmp_path), control.ReadLog(name, 0, 10, "r"))
        assert answer.startswith(b"err:") and b"not a log file name" in answer
    assert b"no log file" in logs._read(str(tmp_path), control.ReadLog("absent.log", 0, 10, "r"))
