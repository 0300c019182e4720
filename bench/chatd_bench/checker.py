"""
The load generator's delivery checks in C, when a C compiler is at hand.

At chatd's `max` plateau a Python generator checking every delivery needs a
whole core (about 1.3 us per delivery) and becomes the limit.  ``_check.c``
does the same checks as ``loadgen.Bench.on_delivery`` on a whole read at
once; it is compiled on first use with the system's ``cc`` into
``~/.cache/chatd-bench`` and loaded with ctypes.  Without a compiler (or with
``CHATD_BENCH_PURE_PYTHON=1``) the generator stays pure Python, and results
say which checker ran.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

SOURCE = Path(__file__).with_name("_check.c")

_loaded: Optional[Any] = None
_tried = False


def load() -> Optional[Any]:
    """The compiled ``chatd_check`` function, or None (pure Python)."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("CHATD_BENCH_PURE_PYTHON") == "1":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chatd-bench"
    library = cache / f"check-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        built = subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)],
            capture_output=True,
        )
        if built.returncode != 0:
            return None
        partial.replace(library)
    check = ctypes.CDLL(str(library)).chatd_check
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    check.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_long, i64, i64, p, i64,
                      ctypes.c_char_p, i64, p, ctypes.c_long, p, p]
    check.restype = ctypes.c_long
    _loaded = check
    return check
