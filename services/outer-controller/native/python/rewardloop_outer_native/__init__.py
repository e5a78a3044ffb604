"""The outer controller's per-event path in Rust (see ``services/outer-controller/native/README.md``)."""

import os

# The extension allocates with mimalloc (v2.3), which by default advises the kernel to back its arenas
# with transparent huge pages and decommits freed pages after 10 ms: the controller's growing session
# state then faults and zeroes 2 MiB pages again and again. Measured on 2*10^5 events (bench_outer's
# throughput phase): system time 0.36-0.52 s with THP, 0.22-0.25 s without. mimalloc reads its options
# when the library loads, so the default is set before the import (an explicit setting wins).
os.environ.setdefault("MIMALLOC_ALLOW_THP", "0")

from ._core import *  # noqa: E402, F403
from ._core import __all__  # noqa: E402, F401
