"""Container logs in the CRI format CRI-O writes under `/var/log/pods/`, and the reading rules of
`kubectl logs` (the kubelet's side of `pods/log`).

Why the real format: a person on a master may `sudo cat /var/log/pods/.../etcd/0.log` and should
see what they see on RHCOS; the kubelet (here the lab's API server) and `crictl logs` both parse
it and strip the prefix. One line is `<RFC 3339 nano time> <stdout|stderr> <F|P> <message>`, `P`
marking a partial line (split after 16 KiB, as CRI-O does) that the next one continues.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_LINE = 16 * 1024


def rfc3339_nano(ts: float) -> str:
    """`2020-07-14T17:13:20.123456789Z`: what CRI-O stamps every line with (UTC on RHCOS)."""
    whole = int(ts)
    nanos = int(round((ts - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


def format_lines(data: bytes, *, stream: str, ts: float) -> bytes:
    """CRI lines for one chunk of complete output lines (the caller splits on newlines)."""
    out = bytearray()
    stamp = rfc3339_nano(ts).encode()
    for line in data.split(b"\n"):
        while len(line) > MAX_LINE:
            out += stamp + b" " + stream.encode() + b" P " + line[:MAX_LINE] + b"\n"
            line = line[MAX_LINE:]
        out += stamp + b" " + stream.encode() + b" F " + line + b"\n"
    return bytes(out)


@dataclass(frozen=True)
class Entry:
    """One logical output line: when, which stream, the text (partial pieces joined)."""

    time: str
    stream: str
    text: bytes


def parse(raw: bytes) -> list[Entry]:
    """CRI lines -> entries; lines that do not parse are kept whole (a truncated last write)."""
    entries: list[Entry] = []
    pending: list[bytes] = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
            entries.append(Entry(time="", stream="stdout", text=line))
            continue
        text = parts[3] if len(parts) == 4 else b""
        if parts[2] == b"P":
            pending.append(text)
            continue
        entries.append(Entry(time=parts[0].decode(errors="replace"), stream=parts[1].decode(),
                             text=b"".join(pending) + text))
        pending = []
    if pending:
        entries.append(Entry(time="", stream="stdout", text=b"".join(pending)))
    return entries


def _since_ok(entry: Entry, since: float | None) -> bool:
    if since is None or not entry.time:
        return True
    try:
        stamp = time.mktime(time.strptime(entry.time[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    except ValueError:
        return True
    return stamp + 1 >= since


def render(entries: Iterable[Entry], *, tail: int | None = None, timestamps: bool = False,
           since: float | None = None, limit_bytes: int | None = None) -> bytes:
    """What `kubectl logs` prints: the messages, optionally stamped, last `tail`, at most `limit_bytes`."""
    chosen = [e for e in entries if _since_ok(e, since)]
    if tail is not None and tail >= 0:
        chosen = chosen[len(chosen) - tail:] if tail else []
    out = b"".join(((e.time.encode() + b" ") if timestamps and e.time else b"") + e.text + b"\n" for e in chosen)
    if limit_bytes is not None and limit_bytes >= 0:
        out = out[:limit_bytes]
    return out


def read(path: Path) -> list[Entry]:
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return []
