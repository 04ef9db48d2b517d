"""C++ frame names for signatures: the qualified name, without return type or parameters.

A C++ function's ELF symbol is mangled (``_ZNK2ns3ObjclEPi``) and its DWARF name is not
qualified (``operator()``): neither tells ``ns::Obj::operator()`` from another class's. The
demangled symbol does, and cut to ``ns::Obj::operator()`` (what gdb prints for a frame with
debug info) it is the same whether or not the binary has debug info, so a rebuild with or
without ``-g`` keeps the signature. Demangling is libstdc++'s own ``__cxa_demangle`` (the
reference implementation of the Itanium ABI, already in any image that runs C++); no Python
package demangles without a C++ toolchain of its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Callable

_OPEN = {"(": ")", "<": ">", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def load_demangler() -> Callable[[str], str | None] | None:
    """``demangle(symbol)`` backed by libstdc++, or None where there is no libstdc++."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    cxa = lib.__cxa_demangle
    cxa.restype = ctypes.c_void_p
    cxa.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    libc.free.argtypes = [ctypes.c_void_p]

    def demangle(symbol: str) -> str | None:
        status = ctypes.c_int(0)
        out = cxa(symbol.encode(), None, None, ctypes.byref(status))
        if not out:
            return None
        try:
            return ctypes.string_at(out).decode("utf-8", "replace") if status.value == 0 else None
        finally:
            libc.free(out)

    return demangle


#: An operator's own name, whose brackets and spaces are not syntax ("operator<", "operator()",
#: "operator new[]", "operator delete"); conversion operators ("operator bool") are handled apart.
_OPERATOR = re.compile(
    r"operator(?:\s*(?:\(\)|\[\]|->\*?|<=>|<<=?|>>=?|&&|\|\||\+\+|--|[-+*/%^&|~!=<>,]=?)"
    r"|\s+(?:new|delete)(?:\[\])?)"
    r"(?:\s(?=<))?"  # "operator< <Foo>": the space before a template's arguments is the name's
)


def _mask(text: str) -> str:
    """``text`` with operator names blanked to letters (same length), so brackets are syntax."""
    return _OPERATOR.sub(lambda m: "o" * len(m.group(0)), text)


def _matching_open(text: str, close_at: int) -> int:
    """Index of the bracket that opens the one closing at ``close_at`` (-1 when unbalanced)."""
    depth = 0
    for i in range(close_at, -1, -1):
        if text[i] in _CLOSE:
            depth += 1
        elif text[i] in _OPEN:
            depth -= 1
            if depth == 0:
                return i
    return -1


def short_name(demangled: str) -> str:
    """``int ns::apply<ns::Obj>(ns::Obj const&, int*) const`` -> ``ns::apply<ns::Obj>``."""
    text = demangled.strip()
    masked = _mask(text)
    end = masked.rfind(")")
    if end > 0:
        start = _matching_open(masked, end)
        if start > 0:  # the parameter list (and the cv-qualifiers after it) go
            text, masked = text[:start], masked[:start]
    # The return type (function templates have one) ends at the last space outside brackets,
    # except inside a conversion operator's name ("ns::X::operator bool").
    conversion = masked.rfind("operator ")
    depth, cut = 0, -1
    for i, c in enumerate(masked):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c == " " and depth == 0 and (conversion < 0 or i < conversion):
            cut = i
    name = text[cut + 1 :]
    if name[:2] in ("(*", "(&") and name.endswith(")"):
        # A function returning a function pointer: "void (*ns::handler(int))(int)".
        return short_name(name[2:-1])
    return name or demangled
