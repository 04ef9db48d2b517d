"""Reading a core from the kernel's pipe (or any fd or file) into a caller's buffer.

The pipe is enlarged (the default 64 KiB halves the throughput), reads honour the copy's
deadline, and pages are let gather in the pipe before they are taken (fewer wake-ups for the
same bytes).
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import stat
import termios
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from webhook.agent.stream_limits import CHUNK

#: The pipe size asked for (F_SETPIPE_SZ): a few chunks, so the kernel keeps dumping while we
#: write. Root may exceed fs.pipe-max-size; if refused we fall back to that maximum, then CHUNK.
PIPE_SIZE = 4 << 20
PIPE_MAX_SIZE_PATH = "/proc/sys/fs/pipe-max-size"
#: Batching of pipe reads (``Source.gather``): pipes smaller than 4 of these are read as is; the
#: nap is the time the kernel takes to write a quarter pipe at about GATHER_RATE bytes/s, at most
#: GATHER_NAP_MAX seconds.
GATHER_MIN = 64 << 10
GATHER_RATE = 4e9
GATHER_NAP_MAX = 0.00025


def _pipe_max_size() -> int:
    try:
        with open(PIPE_MAX_SIZE_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return CHUNK


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> int:
    """Ask for a bigger pipe buffer (the default 64 KiB halves the throughput); best effort.

    Tries ``size``, then the unprivileged maximum, then one chunk; returns the size obtained.
    Never shrinks a pipe someone made bigger (the helper, run by the kernel with every
    capability, may have got more than we may ask for).
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        current = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 0
    if current >= size:
        return current
    tried: set[int] = set()
    for want in (size, None, CHUNK):
        if want is None:  # /proc read only once ``size`` was refused (root seldom is)
            want = min(size, _pipe_max_size())
        if want in tried or want <= current:
            continue
        tried.add(want)
        try:
            return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, want)
        except OSError:
            continue
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 0



class Source:
    """Reads into a caller's buffer from an fd (with a deadline on pipes) or a file object."""

    def __init__(self, src: int | BinaryIO, deadline: float | None, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock
        self.fd = -1  # -1: a file object without a descriptor (``file``, read with readinto)
        self.file: Any = None
        if isinstance(src, int):
            self.fd = src
        else:
            try:
                self.fd = src.fileno()
            except (AttributeError, OSError, ValueError):
                self.file = src
        self.pollable = False
        self.is_pipe = False
        if self.file is None:
            try:
                mode = os.fstat(self.fd).st_mode
                self.is_pipe = stat.S_ISFIFO(mode)
                self.pollable = self.is_pipe or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
            except OSError:
                pass
            if self.pollable:
                pipe_size = enlarge_pipe(self.fd)
                self.poller = select.poll()
                self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
                if self.is_pipe and pipe_size >= 4 * GATHER_MIN:
                    self.gather_low = pipe_size // 4
                    self.gather_nap = min(GATHER_NAP_MAX, pipe_size / GATHER_RATE)
        self._avail = array.array("i", [0])

    #: Take the pipe's bytes once it holds this many (0: whenever there are any).
    gather_low = 0
    gather_nap = 0.0

    def gather(self) -> None:
        """Let pages gather in the pipe before taking them.

        The kernel writes a core into the pipe a page at a time; a reader on another CPU that
        takes whatever is there wakes for every page or two (tens of thousands of syscall
        rounds per 256 MiB, measured: twice the CPU). When the pipe holds less than a quarter
        of its size and its writer is still there, nap for about the time the kernel needs to
        fill that quarter (well under the time to fill the pipe, so the dump never waits).
        """
        if not self.gather_low:
            return
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, self._avail)
        except OSError:
            return
        if self._avail[0] >= self.gather_low:
            return
        for _fd, events in self.poller.poll(0):
            if events & (select.POLLHUP | select.POLLERR):
                return  # the dump is over: take the rest at once
        time.sleep(self.gather_nap)

    def wait(self) -> bool:
        """Until the pipe has data or EOF; False when the deadline comes first."""
        if self.deadline is None:
            return True
        while True:
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                return False
            if not self.pollable or self.poller.poll(int(remaining * 1000) + 1):
                return True

    def fill(self, view: memoryview) -> tuple[int, bool, bool]:
        """Fill ``view`` as far as possible; return (bytes, eof, deadline reached)."""
        filled = 0
        size = len(view)
        while filled < size:
            if self.deadline is not None and self.clock() >= self.deadline:
                return filled, False, True
            if self.file is not None:
                n = self.file.readinto(view[filled:])
            else:
                self.gather()
                if self.pollable and self.deadline is not None:
                    remaining = max(0.0, self.deadline - self.clock())
                    if not self.poller.poll(int(remaining * 1000) + 1):
                        continue  # loop re-checks the deadline
                try:
                    n = os.readv(self.fd, [view[filled:]])
                except InterruptedError:
                    continue
            if not n:
                return filled, True, False
            filled += n
        return filled, False, False

