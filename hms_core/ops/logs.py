"""``hms logs``: print the rules' log files (``logs/<rule>/*.log``), once or following them."""
from __future__ import annotations

import codecs
import os
import sys
import threading
from pathlib import Path
from typing import IO, BinaryIO

from hms_core.errors import ConfigError
from hms_core.ops import snakemake_log, ssh

SNAKEMAKE_RULE = "snakemake"  # pseudo rule: Snakemake's own newest log
TAIL_LINES = 200
TAIL_BYTES = 1 << 20  # at most this much of a log is shown at first, whatever its line lengths
_BLOCK = 1 << 16


def log_files(workdir: str | os.PathLike, rule: str | None = None) -> list[Path]:
    """Log files of ``rule`` (all rules when None), oldest first by modification time.

    ``rule="snakemake"`` gives Snakemake's own newest log.

    Raises
    ------
    ConfigError
        ``rule`` has no log folder; the message lists the rules that have one.
    """
    logs_dir = Path(workdir, "logs")
    if rule == SNAKEMAKE_RULE:
        newest = snakemake_log.newest_snakemake_log(workdir)
        return [newest] if newest else []
    if rule is None:
        files = [p for p in logs_dir.rglob("*.log") if p.is_file()] if logs_dir.is_dir() else []
    else:
        rule_dir = logs_dir / rule
        if not rule_dir.is_dir():
            known = sorted(p.name for p in logs_dir.iterdir() if p.is_dir()) if logs_dir.is_dir() else []
            raise ConfigError(f"no logs for rule {rule!r} in {logs_dir} (rules with logs: "
                              f"{', '.join(known) or 'none yet'}; or {SNAKEMAKE_RULE!r})")
        files = [p for p in rule_dir.rglob("*.log") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime, str(p)))


def show_logs(workdir: str | os.PathLike, rule: str | None, follow: bool, host: str | None, *,
              out: IO[str] | None = None, poll_s: float = 0.5,
              stop: threading.Event | None = None) -> int:
    """Print the last lines of each log of ``rule``; ``follow`` keeps printing new lines.

    Parameters
    ----------
    workdir : path-like
        The run's working directory (on ``host`` when given).
    rule : str or None
        Rule name, ``"snakemake"`` for Snakemake's own log, None for all rules.
    follow : bool
        Keep printing lines appended to the logs (and new log files) until Ctrl-C or ``stop``.
    host : str or None
        ``user@host`` of a remote run: runs ``hms logs`` there over SSH.
    poll_s : float
        Seconds between two looks at the files in follow mode.
    """
    out = out or sys.stdout
    if host is not None:
        args = ["logs", *([rule] if rule else []), *(["-f"] if follow else [])]
        return ssh.stream_remote(host, ssh.hms_shell(workdir, args), out=out)
    offsets: dict[Path, int] = {}
    for path in log_files(workdir, rule):
        offsets[path] = _print_tail(path, out)
    if not offsets and not follow:
        out.write(f"no log files yet under {Path(workdir, 'logs')}\n")
    if follow:
        _follow(workdir, rule, offsets, out, poll_s=poll_s, stop=stop or threading.Event())
    return 0


def _print_tail(path: Path, out: IO[str]) -> int:
    """Print the last lines of ``path``, read backwards from its end; return its size in bytes."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail = _read_tail(f, size)
    lines = tail.decode(errors="replace").splitlines(keepends=True)
    cut = len(tail) < size  # the file has more than what was read
    if len(lines) > TAIL_LINES:
        lines, cut = lines[-TAIL_LINES:], True
    elif cut and len(lines) > 1:
        lines = lines[1:]  # the first line read is partial
    out.write(f"==> {path} <==\n")
    if cut:
        out.write(f"... earlier lines not shown ({size / 1e6:.1f} MB in all)\n")
    out.writelines(lines)
    if lines and not lines[-1].endswith("\n"):
        out.write("\n")
    out.flush()
    return size


def _read_tail(f: BinaryIO, size: int) -> bytes:
    """The end of an open file holding more than :data:`TAIL_LINES` lines (at most :data:`TAIL_BYTES`)."""
    blocks: list[bytes] = []
    n_bytes = n_newlines = 0
    pos = size
    while pos > 0 and n_bytes < TAIL_BYTES and n_newlines <= TAIL_LINES:
        step = min(_BLOCK, pos, TAIL_BYTES - n_bytes)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        blocks.append(block)
        n_bytes += len(block)
        n_newlines += block.count(b"\n")
    return b"".join(reversed(blocks))


def _copy_range(path: Path, start: int, end: int, out: IO[str]) -> None:
    """Write bytes ``start:end`` of ``path`` to ``out`` block by block."""
    with open(path, "rb") as f:
        f.seek(start)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while start < end:
            block = f.read(min(_BLOCK, end - start))
            if not block:
                break
            start += len(block)
            out.write(decoder.decode(block))
        out.write(decoder.decode(b"", final=True))


def _follow(workdir, rule, offsets: dict[Path, int], out: IO[str], *, poll_s: float,
            stop: threading.Event) -> None:
    last_shown = next(reversed(offsets), None)
    try:
        while not stop.wait(poll_s):
            for path in log_files(workdir, rule):
                size = path.stat().st_size
                start = offsets.get(path, 0)
                if size < start:  # truncated or rewritten: start over
                    start = 0
                if size == start:
                    continue
                if path != last_shown:
                    out.write(f"==> {path} <==\n")
                    last_shown = path
                _copy_range(path, start, size, out)
                offsets[path] = size
                out.flush()
    except KeyboardInterrupt:
        pass
