"""Sending object commands, whose keys carry spread tags, on a process's command streams.

Off a Redis Cluster every key lives on one server: the commands go out on the one stream, in
order, as one batch. On a Redis Cluster each spread tag's commands go on the stream to the
master serving it (``CommandStream.for_slot``), so commands of different tags are ordered
only within their tag; what an object script left to other slots (scripts.SPREAD) follows
once it answered, and commands that must come after all of it (``then``: a task's XACK after
its results are stored, each on its own key's stream too) are written when everything before
has answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from rayr.gcs import scripts
from rayr.gcs.address import spread_slot
from rayr.gcs.client import Command, GcsClient, Tagged
from rayr.gcs.command_stream import CommandStream

Callback = Callable[[list[Any]], None]
_SPREAD_SCRIPTS = frozenset((scripts.STORE_OBJECTS, scripts.RELEASE_HOLDERS, scripts.FREE_OBJECTS))


def stream_for(stream: CommandStream, gcs: GcsClient, key: str) -> CommandStream:
    """The stream for commands on ``key``: on a Redis Cluster the one to its master."""
    return _tag_stream(stream, gcs, gcs.keys.tag_of(key)) if gcs.spread_only else stream


def _tag_stream(stream: CommandStream, gcs: GcsClient, tag: int | None) -> CommandStream:
    """The stream for keys under spread tag ``tag`` (None: the tables', ``stream`` itself)."""
    return stream if tag is None else stream.for_slot(spread_slot(gcs.keys, tag))


def send(stream: CommandStream, gcs: GcsClient, tagged: Sequence[Tagged], callback: Callback | None = None,
         then: Sequence[Command] = ()) -> None:
    """Write ``tagged`` (and ``then`` after them); ``callback(replies)`` gets the replies of
    both in order once they are in (an object script's reply is ``{result, remote}``)."""
    if not gcs.spread_only:
        stream.send([command for _, command in tagged] + list(then), callback)
        return
    _Fanout(stream, gcs, tagged, callback, then).start()


def _key_of(command: Command) -> str:
    """The key a command of ``then`` touches (XACK, XDEL: the stream; XREADGROUP: the first
    stream it reads)."""
    if command[0] == "XREADGROUP":
        return command[list(command).index("STREAMS") + 1]
    return command[1]


class _Fanout:
    """One ``send`` on a Redis Cluster: a batch per tag, then what they left to other slots,
    then ``then``, then the callback."""

    def __init__(self, stream: CommandStream, gcs: GcsClient, tagged: Sequence[Tagged],
                 callback: Callback | None, then: Sequence[Command]) -> None:
        self.stream, self.gcs, self.callback, self.then = stream, gcs, callback, list(then)
        self.tagged = list(tagged)
        self.replies: list[Any] = [None] * len(self.tagged)
        self.lock = threading.Lock()
        self.outstanding = 0

    def start(self) -> None:
        groups: dict[int | None, list[int]] = {}
        for index, (tag, _) in enumerate(self.tagged):
            groups.setdefault(tag, []).append(index)
        self.outstanding = len(groups) or 1
        if not groups:
            self._one_done()
        for tag, indexes in groups.items():
            commands = [self.tagged[i][1] for i in indexes]
            _tag_stream(self.stream, self.gcs, tag).send(commands, self._on_group(indexes))

    def _on_group(self, indexes: list[int]) -> Callback:
        def on_replies(replies: list[Any]) -> None:
            remote: list[Any] = []
            for index, reply in zip(indexes, replies, strict=True):
                self.replies[index] = reply
                command = self.tagged[index][1]
                if command[0] == "EVAL" and command[1] in _SPREAD_SCRIPTS and isinstance(reply, list):
                    remote.extend(reply[1])
            follow = self.gcs.remote_commands(remote)
            if follow:  # their own fan-out; this group is done when it is
                _Fanout(self.stream, self.gcs, follow, lambda _: self._one_done(), ()).start()
            else:
                self._one_done()
        return on_replies

    def _one_done(self) -> None:
        with self.lock:
            self.outstanding -= 1
            if self.outstanding > 0:
                return
        if self.then:  # each on the stream of its key's master, answered together
            then = [(self.gcs.keys.tag_of(_key_of(command)), command) for command in self.then]
            _Fanout(self.stream, self.gcs, then, self._finish, ()).start()
        else:
            self._finish([])

    def _finish(self, then_replies: list[Any]) -> None:
        if self.callback is not None:
            self.callback(self.replies + then_replies)
