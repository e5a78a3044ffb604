"""The outer controller's per-event path in Rust (see ``services/outer-controller/native/README.md``)."""

from ._core import *  # noqa: F403
from ._core import __all__  # noqa: F401
