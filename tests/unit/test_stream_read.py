"""Raw XREADGROUP replies, as both protocols shape them, read back into entries."""

from __future__ import annotations

from rayr.gcs.stream_read import parse_read, read_command


def test_resp2_and_resp3_replies_give_the_same_entries():
    entries = [[b"1-0", [b"s", b"spec1", b"n", b"1"]], [b"1-1", None]]
    want = [(b"tasks:a", [(b"1-0", {b"s": b"spec1", b"n": b"1"}), (b"1-1", None)])]
    assert parse_read([[b"tasks:a", entries]]) == want
    assert parse_read({b"tasks:a": entries}) == want
    assert parse_read(None) == [] and parse_read([]) == [] and parse_read({}) == []


def test_read_command_names_streams_then_ids():
    packed = read_command("raylets", "node.worker", {"s1": ">", "s2": "0"}, 16, 2)
    words = packed.split(b"\r\n")[2::2]
    assert words == [b"XREADGROUP", b"GROUP", b"raylets", b"node.worker", b"COUNT", b"16", b"BLOCK", b"2",
                     b"STREAMS", b"s1", b"s2", b">", b"0"]
