# The trainer's tests need torch, which lives only in .venv-trainer (make test-trainer). When the root
# .venv's pytest walks `services/` (make test-unit), skip this folder instead of failing on the import.
import importlib.util

collect_ignore_glob = ["tests/*", "bench/*"] if importlib.util.find_spec("torch") is None else []
