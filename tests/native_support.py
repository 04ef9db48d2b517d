"""Helpers for the static native binaries' tests: the wrapper's probe program and its parser,
the wrapper's list frames, whether an ELF file is static."""

from __future__ import annotations

import struct
from pathlib import Path

from webhook.constants import WRAPPER_LIST_MAGIC


def is_static_elf(path: Path) -> bool:
    """An ELF executable without a PT_INTERP program header (no dynamic loader needed)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit
        return False
    endian = "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    types = [struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


PROBE_C = r"""
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
extern char **environ;
static void hex(const char *tag, const char *s) {
    printf("%s ", tag);
    for (; *s; s++) printf("%02x", (unsigned char)*s);
    printf("\n");
}
static void lim(rlim_t v) { if (v == RLIM_INFINITY) printf(" unlimited"); else printf(" %llu", (unsigned long long)v); }
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) hex("arg", argv[i]);
    for (char **e = environ; *e; e++) hex("env", *e);
    struct rlimit r;
    getrlimit(RLIMIT_CORE, &r);
    printf("core"); lim(r.rlim_cur); lim(r.rlim_max); printf("\n");
    char buf[256];
    FILE *f = fopen("/proc/self/coredump_filter", "r");
    if (f) { if (fgets(buf, sizeof buf, f)) printf("filter %s", buf); fclose(f); }
    f = fopen("/proc/self/status", "r");
    if (f) {
        while (fgets(buf, sizeof buf, f))
            if (!strncmp(buf, "SigBlk:", 7) || !strncmp(buf, "SigIgn:", 7)) printf("%s", buf);
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *de;
        printf("fds");
        while ((de = readdir(d)))
            if (de->d_name[0] != '.' && atoi(de->d_name) != dirfd(d)) printf(" %s", de->d_name);
        printf("\n");
        closedir(d);
    }
    fflush(stdout);
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], "exit=", 5)) return atoi(argv[i] + 5);
    return 0;
}
"""


def parse_probe(out: str) -> dict:
    got: dict = {"args": [], "env": {}}
    for line in out.splitlines():
        tag, rest = (line.split(None, 1) + [""])[:2]
        if tag == "arg":
            got["args"].append(bytes.fromhex(rest).decode())
        elif tag == "env":
            k, _, v = bytes.fromhex(rest).decode().partition("=")
            got["env"][k] = v
        elif tag == "core":
            got["core"] = tuple(rest.split())
        elif tag == "filter":
            got["filter"] = int(rest, 16)
        elif tag in ("SigBlk:", "SigIgn:"):
            got[tag[:-1]] = rest.strip()
        elif tag == "fds":
            got["fds"] = sorted(int(x) for x in rest.split())
    return got


def read_frames(out: bytes) -> list[tuple[str, bytes, bytes]]:
    """A strict reader of the documented framing (independent of webhook/inspect/listing.py)."""
    head = WRAPPER_LIST_MAGIC.encode() + b"\n"
    assert out.startswith(head), out[:40]
    pos, frames = len(head), []
    while True:
        nl = out.index(b"\n", pos)
        fields = out[pos:nl].decode().split(" ")
        if fields[0] == "end":
            assert fields == ["end", str(len(frames))] and nl + 1 == len(out)
            return frames
        kind, plen, blen = fields[0], int(fields[1]), int(fields[2])
        assert kind in ("present", "missing", "error")
        start = nl + 1
        frames.append((kind, out[start:start + plen], out[start + plen:start + plen + blen]))
        assert out[start + plen + blen:start + plen + blen + 1] == b"\n"
        pos = start + plen + blen + 1
