"""Dataset fetch + parse. The parsers are tested offline on small files; the real downloads skip offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rewardloop_sim.recomind import datasets
from rewardloop_sim.recomind.datasets import (
    DatasetUnavailable,
    MovieLens100k,
    OpenBanditSample,
    movielens_100k,
    obp_sample,
)


def test_movielens_parser_on_a_small_file(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t100\n2\t1\t3\t50\n2\t3\t4\t70\n"
    )
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tHeat\t1995\tAction Crime\n3\tX\t1990\t\n"
    )
    ml = datasets._parse_movielens(tmp_path)
    assert (ml.n_users, ml.n_items) == (2, 3)
    assert ml.user_id.tolist() == [0, 1, 1] and ml.item_id.tolist() == [1, 0, 2]
    assert ml.rating.tolist() == [5.0, 3.0, 4.0] and ml.timestamp.tolist() == [100, 50, 70]
    assert ml.genre_names == ("Action", "Animation", "Children's", "Comedy", "Crime")
    assert ml.item_genres.tolist() == [
        [False, True, True, True, False],
        [True, False, False, False, True],
        [False, False, False, False, False],
    ]
    assert ml.item_title[0] == "Toy Story"


def test_obd_parser_matches_obps_featurisation(tmp_path: Path) -> None:
    (tmp_path / "all.csv").write_text(
        ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
        "user-item_affinity_0,user-item_affinity_1\n"
        "0,2019-11-24 00:00:02,1,3,0,0.5,b,x,0.0,1.0\n"
        "1,2019-11-24 00:00:01,0,1,1,0.25,a,x,2.0,0.0\n"
        "2,2019-11-24 00:00:03,1,2,0,0.5,c,y,0.0,0.0\n"
    )
    (tmp_path / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1\n1,1,0.5,zz\n0,0,-0.5,aa\n"
    )
    obd = datasets._parse_obd(tmp_path, "random", "all")
    # sorted by timestamp; positions 1,2,3 -> dense rank 0,1,2
    assert obd.action.tolist() == [0, 1, 1]
    assert obd.position.tolist() == [0, 2, 1]
    assert obd.reward.tolist() == [1, 0, 0] and obd.pscore.tolist() == [0.25, 0.5, 0.5]
    # get_dummies(drop_first=True): feature_0 levels a,b,c -> columns b,c; feature_1 x,y -> column y
    assert obd.context.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert obd.user_item_affinity.tolist() == [[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    # items sorted by id; label-encoded categorical features first, then item_feature_0
    assert obd.action_context.tolist() == [[0.0, -0.5], [1.0, 0.5]]
    assert (obd.n_actions, obd.len_list, obd.n_rounds) == (2, 3, 3)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="behavior_policy"):
        obp_sample("greedy")
    with pytest.raises(ValueError, match="campaign"):
        obp_sample("random", "kids")


def test_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "RECBOLE_SPEC", "rewardloop-no-such-package-xyz==0.0.1")
    monkeypatch.setattr(datasets, "_pip_command", lambda: ["false"])
    with pytest.raises(DatasetUnavailable, match="failed"):
        movielens_100k(tmp_path)


@pytest.fixture(scope="module")
def movielens() -> MovieLens100k:
    try:
        return movielens_100k()
    except DatasetUnavailable as exc:  # offline and not cached: nothing to check here
        pytest.skip(f"MovieLens-100k unavailable: {exc}")


@pytest.fixture(scope="module", params=["random", "bts"])
def obd(request: pytest.FixtureRequest) -> OpenBanditSample:
    try:
        return obp_sample(request.param)
    except DatasetUnavailable as exc:
        pytest.skip(f"Open Bandit Dataset sample unavailable: {exc}")


def test_movielens_100k_is_the_real_thing(movielens: MovieLens100k) -> None:
    ml = movielens
    assert (ml.n_users, ml.n_items, ml.rating.shape[0]) == (943, 1682, 100_000)
    assert set(np.unique(ml.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ml.rating.mean() == pytest.approx(3.52986)
    assert len(ml.genre_names) == 19 and ml.item_genres.shape == (1682, 19)
    assert ml.item_title[0] == "Toy Story"
    # every user rated at least 20 movies (the dataset's documented property)
    assert np.bincount(ml.user_id).min() >= 20
    source = json.loads((datasets.default_cache_dir() / "movielens-100k" / "SOURCE.json").read_text())
    assert source["spec"] == datasets.RECBOLE_SPEC and len(source["sha256"]) == 64


def test_open_bandit_sample_is_the_real_thing(obd: OpenBanditSample) -> None:
    assert (obd.n_rounds, obd.n_actions, obd.len_list) == (10_000, 80, 3)
    assert obd.context.shape[0] == 10_000 and obd.action_context.shape == (80, 4)
    assert ((obd.pscore > 0) & (obd.pscore <= 1)).all()
    assert set(np.unique(obd.reward).tolist()) <= {0, 1}
    assert 0.001 < obd.reward.mean() < 0.01  # ZOZOTOWN CTRs are well under 1 %
    if obd.behavior_policy == "random":
        # uniform random over 80 items per position: pscore = 1/80
        assert np.allclose(obd.pscore, 1 / 80)
