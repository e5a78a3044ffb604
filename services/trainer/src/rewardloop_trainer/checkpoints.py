"""Versioned credit-model checkpoints.

In ``directory`` (the outer controller's ``OUTER_CREDIT_MODEL_DIR``), version ``N`` is two files:

* ``credit-model-v<N>.npz`` -- the artefact the outer controller loads (numpy only, the arrays of
  :mod:`rewardloop_outer.credit`); the highest ``N`` there wins;
* ``credit-trainer-v<N>.pt`` -- the full torch state (incl. the reconstruction head) and metadata, so
  training can resume from the newest version.

Both are written to a temporary name and renamed, so a reader never sees a half-written artefact
(the temporary names do not match the artefact pattern the controller scans for).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .credit.gated_attention import GatedAttentionCredit

_NPZ = re.compile(r"^credit-model-v(\d+)\.npz$")
_PT = re.compile(r"^credit-trainer-v(\d+)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    version: int
    artefact: Path
    state: Path


def versions(directory: str | os.PathLike[str]) -> list[int]:
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted({int(m.group(1)) for p in d.iterdir() if (m := _NPZ.match(p.name) or _PT.match(p.name))})


def next_version(directory: str | os.PathLike[str]) -> int:
    vs = versions(directory)
    return (vs[-1] + 1) if vs else 1


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: GatedAttentionCredit, directory: str | os.PathLike[str], meta: dict[str, Any]) -> Checkpoint:
    """Write the next version (torch state first, then the artefact the controller picks up)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    version = next_version(d)
    state_path = d / f"credit-trainer-v{version}.pt"
    npz_path = d / f"credit-model-v{version}.npz"
    hidden, attention = model.V.shape
    payload = {
        "version": version,
        "hidden": int(hidden),
        "attention": int(attention),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": json.dumps(meta, sort_keys=True),
    }
    _atomic_write(state_path, lambda f: torch.save(payload, f))
    _atomic_write(npz_path, lambda f: np.savez(f, **model.export_arrays()))
    return Checkpoint(version, npz_path, state_path)


def load_latest(directory: str | os.PathLike[str]) -> tuple[GatedAttentionCredit, int, dict[str, Any]] | None:
    """The newest torch state in ``directory`` (``None`` when there is none)."""
    d = Path(directory)
    states = sorted(
        ((int(m.group(1)), p) for p in d.glob("credit-trainer-v*.pt") if (m := _PT.match(p.name))),
        reverse=True,
    )
    if not states:
        return None
    version, path = states[0]
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = GatedAttentionCredit(hidden=payload["hidden"], attention=payload["attention"])
    model.load_state_dict(payload["state_dict"])
    return model, version, json.loads(payload["meta"])
