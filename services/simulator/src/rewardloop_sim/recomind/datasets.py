"""Real public logs that ship inside PyPI packages, fetched without installing those packages.

* MovieLens-100k: the atomic files in the `recbole` wheel (`recbole/dataset_example/ml-100k/`).
* Open Bandit Dataset sample (ZOZOTOWN, 10,000 rounds per logging policy): the csv files in the `obp`
  0.5.7 sdist (`obp/dataset/obd/{random,bts}/{all,men,women}/`); obp 0.5.7 publishes no wheel.

`pip download --no-deps` puts the package file in a temporary folder; only the data files are extracted
into the cache (`REWARDLOOP_DATA_DIR`, default `<repo>/.run/datasets`), with a SOURCE.json naming the
package file and its sha256. Nothing is installed. Parsing uses the csv module and numpy only.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECBOLE_SPEC = "recbole==1.2.1"
OBP_SPEC = "obp==0.5.7"
MOVIELENS_MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")


class DatasetUnavailable(RuntimeError):
    """The data is not in the cache and could not be downloaded (offline, no pip, bad package)."""


def default_cache_dir() -> Path:
    """`REWARDLOOP_DATA_DIR`, else `<repo>/.run/datasets` (the repo found from this file), else ~/.cache."""
    env = os.environ.get("REWARDLOOP_DATA_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / ".git").exists() and (parent / "services").is_dir():
            return parent / ".run" / "datasets"
    return Path.home() / ".cache" / "rewardloop" / "datasets"


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise DatasetUnavailable("no pip found (neither `python -m pip` nor pip3/pip on PATH) to download with")


def _download(spec: str, dest: Path) -> Path:
    """`pip download --no-deps` of one package file; returns its path."""
    cmd = [
        *_pip_command(),
        "download",
        "--no-deps",
        "--ignore-requires-python",  # obp 0.5.7 declares python < 3.10; we only read its data files
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "20",
        "--quiet",
        "--dest",
        str(dest),
        spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        raise DatasetUnavailable(
            f"`{' '.join(cmd)}` failed (rc={proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(package_file: Path, wanted: dict[str, Path]) -> None:
    """Copy archive members whose path ends with a key of `wanted` to the mapped destination."""
    found: dict[str, bytes] = {}
    if package_file.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(package_file) as zf:
            for name in zf.namelist():
                for suffix in wanted:
                    if name.endswith(suffix):
                        found[suffix] = zf.read(name)
    else:
        with tarfile.open(package_file) as tf:
            for member in tf.getmembers():
                for suffix in wanted:
                    if member.isfile() and member.name.endswith(suffix):
                        fh = tf.extractfile(member)
                        if fh is not None:
                            found[suffix] = fh.read()
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DatasetUnavailable(f"{package_file.name} does not contain {missing}")
    for suffix, dest in wanted.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".tmp")
        tmp.write_bytes(found[suffix])
        tmp.replace(dest)


def _fetch(spec: str, target: Path, wanted: dict[str, Path]) -> None:
    """Download `spec` once and extract `wanted` under `target`, unless every file is already there."""
    if all(p.exists() for p in wanted.values()) and (target / "SOURCE.json").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rewardloop-dl-") as tmp:
        package_file = _download(spec, Path(tmp))
        _extract(package_file, wanted)
        source = {"spec": spec, "file": package_file.name, "sha256": _sha256(package_file)}
        (target / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- MovieLens
@dataclass(frozen=True)
class MovieLens100k:
    """The 100,000 ratings of MovieLens-100k. Ids are 0-based dense indices (raw id = index + 1)."""

    user_id: np.ndarray  # (100000,) int64 in [0, n_users)
    item_id: np.ndarray  # (100000,) int64 in [0, n_items)
    rating: np.ndarray  # (100000,) float64 in 1..5
    timestamp: np.ndarray  # (100000,) int64 unix seconds
    item_genres: np.ndarray  # (n_items, n_genres) bool
    genre_names: tuple[str, ...]
    item_title: tuple[str, ...]
    n_users: int
    n_items: int


def movielens_100k(cache_dir: Path | None = None) -> MovieLens100k:
    """MovieLens-100k from the recbole wheel (downloaded once into the cache)."""
    root = (cache_dir or default_cache_dir()) / "movielens-100k"
    wanted = {f"dataset_example/ml-100k/{m}": root / m for m in MOVIELENS_MEMBERS}
    _fetch(RECBOLE_SPEC, root, wanted)
    return _parse_movielens(root)


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """RecBole atomic file: tab-separated, header `name:type`."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        rows = [row for row in reader if row]
    return header, rows


def _parse_movielens(root: Path) -> MovieLens100k:
    header, rows = _read_atomic(root / "ml-100k.inter")
    if header != ["user_id", "item_id", "rating", "timestamp"]:
        raise ValueError(f"unexpected ml-100k.inter header {header}")
    raw = np.array(rows, dtype=np.float64)
    user_raw = raw[:, 0].astype(np.int64)
    item_raw = raw[:, 1].astype(np.int64)
    item_header, item_rows = _read_atomic(root / "ml-100k.item")
    if item_header[:1] != ["item_id"] or "class" not in item_header:
        raise ValueError(f"unexpected ml-100k.item header {item_header}")
    n_users = int(user_raw.max())
    n_items = max(int(item_raw.max()), max(int(r[0]) for r in item_rows))
    if user_raw.min() < 1 or item_raw.min() < 1:
        raise ValueError("ml-100k ids are expected to start at 1")
    title_col, class_col = item_header.index("movie_title"), item_header.index("class")
    genre_lists: dict[int, list[str]] = {}
    titles = [""] * n_items
    for row in item_rows:
        idx = int(row[0]) - 1
        titles[idx] = row[title_col] if title_col < len(row) else ""
        genre_lists[idx] = row[class_col].split() if class_col < len(row) else []
    genre_names = tuple(sorted({g for gs in genre_lists.values() for g in gs}))
    genres = np.zeros((n_items, len(genre_names)), dtype=bool)
    position = {g: i for i, g in enumerate(genre_names)}
    for idx, gs in genre_lists.items():
        for g in gs:
            genres[idx, position[g]] = True
    return MovieLens100k(
        user_id=user_raw - 1,
        item_id=item_raw - 1,
        rating=raw[:, 2],
        timestamp=raw[:, 3].astype(np.int64),
        item_genres=genres,
        genre_names=genre_names,
        item_title=tuple(titles),
        n_users=n_users,
        n_items=n_items,
    )


# ---------------------------------------------------------------------------------------------- OBD
@dataclass(frozen=True)
class OpenBanditSample:
    """One logging policy's rounds of the Open Bandit Dataset sample, featurised like obp's own loader.

    `context` = one-hot user features (first category of each dropped, as obp's `pd.get_dummies(...,
    drop_first=True)`); `action_context` = label-encoded categorical item features then item_feature_0.
    Rounds are sorted by timestamp; `position` is the dense rank of the logged position minus 1.
    """

    behavior_policy: str
    campaign: str
    action: np.ndarray  # (n_rounds,) int64
    position: np.ndarray  # (n_rounds,) int64 in [0, len_list)
    reward: np.ndarray  # (n_rounds,) int64 click 0/1
    pscore: np.ndarray  # (n_rounds,) float64: the logging policy's propensity of (action, position)
    context: np.ndarray  # (n_rounds, d_context) float64
    user_item_affinity: np.ndarray  # (n_rounds, n_actions) float64 (obp leaves it out of `context`)
    action_context: np.ndarray  # (n_actions, d_action) float64
    timestamp: tuple[str, ...]
    n_actions: int
    len_list: int

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])


def obp_sample(
    behavior_policy: str = "random", campaign: str = "all", cache_dir: Path | None = None
) -> OpenBanditSample:
    """The Open Bandit Dataset sample from the obp 0.5.7 sdist (downloaded once into the cache)."""
    if behavior_policy not in OBD_POLICIES:
        raise ValueError(f"behavior_policy must be one of {OBD_POLICIES}, got {behavior_policy!r}")
    if campaign not in OBD_CAMPAIGNS:
        raise ValueError(f"campaign must be one of {OBD_CAMPAIGNS}, got {campaign!r}")
    root = (cache_dir or default_cache_dir()) / "obd"
    wanted = {
        f"obp/dataset/obd/{p}/{c}/{name}": root / p / c / name
        for p in OBD_POLICIES
        for c in OBD_CAMPAIGNS
        for name in (f"{c}.csv", "item_context.csv")
    }
    _fetch(OBP_SPEC, root, wanted)
    return _parse_obd(root / behavior_policy / campaign, behavior_policy, campaign)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, [row for row in reader if row]


def _one_hot_drop_first(column: list[str]) -> np.ndarray:
    levels = sorted(set(column))
    index = {v: i for i, v in enumerate(levels)}
    codes = np.array([index[v] for v in column], dtype=np.int64)
    out = np.zeros((len(column), max(len(levels) - 1, 0)))
    mask = codes > 0
    out[np.flatnonzero(mask), codes[mask] - 1] = 1.0
    return out


def _parse_obd(folder: Path, behavior_policy: str, campaign: str) -> OpenBanditSample:
    header, rows = _read_csv(folder / f"{campaign}.csv")
    col = {name: i for i, name in enumerate(header)}
    for needed in ("timestamp", "item_id", "position", "click", "propensity_score"):
        if needed not in col:
            raise ValueError(f"{folder}/{campaign}.csv lacks column {needed!r}")
    order = sorted(range(len(rows)), key=lambda i: rows[i][col["timestamp"]])  # stable, like obp's sort
    rows = [rows[i] for i in order]
    action = np.array([int(r[col["item_id"]]) for r in rows], dtype=np.int64)
    raw_position = np.array([int(r[col["position"]]) for r in rows], dtype=np.int64)
    levels = np.unique(raw_position)
    position = np.searchsorted(levels, raw_position)
    user_cols = [i for i, name in enumerate(header) if "user_feature" in name]
    affinity_cols = [i for i, name in enumerate(header) if name.startswith("user-item_affinity")]
    context = np.concatenate([_one_hot_drop_first([r[i] for r in rows]) for i in user_cols], axis=1)
    affinity = np.array([[float(r[i]) for i in affinity_cols] for r in rows])

    item_header, item_rows = _read_csv(folder / "item_context.csv")
    icol = {name: i for i, name in enumerate(item_header)}
    item_rows = sorted(item_rows, key=lambda r: int(r[icol["item_id"]]))
    cat_cols = [
        i
        for i, name in enumerate(item_header)
        if name.startswith("item_feature") and name != "item_feature_0"
    ]
    encoded = []
    for i in cat_cols:
        values = [r[i] for r in item_rows]
        index = {v: k for k, v in enumerate(sorted(set(values)))}  # sklearn LabelEncoder: sorted classes
        encoded.append([float(index[v]) for v in values])
    encoded.append([float(r[icol["item_feature_0"]]) for r in item_rows])
    action_context = np.array(encoded).T
    n_actions = int(action.max() + 1)
    return OpenBanditSample(
        behavior_policy=behavior_policy,
        campaign=campaign,
        action=action,
        position=position.astype(np.int64),
        reward=np.array([int(r[col["click"]]) for r in rows], dtype=np.int64),
        pscore=np.array([float(r[col["propensity_score"]]) for r in rows]),
        context=context,
        user_item_affinity=affinity,
        action_context=action_context,
        timestamp=tuple(r[col["timestamp"]] for r in rows),
        n_actions=n_actions,
        len_list=int(position.max() + 1),
    )
