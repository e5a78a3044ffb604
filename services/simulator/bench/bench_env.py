"""Throughput of RecoMindEnv on one core: slate steps per second.

    .venv/bin/python services/simulator/bench/bench_env.py [--steps 100000] [--grounded]

Rates per CPU-second of this process (the one-core figure, less sensitive to other jobs on a shared
machine) and per wall-second. Three loops: `step` alone (a fixed slate), `candidates + step` (what a
policy loop needs at least), and full sessions with a linear policy over the observable features
(candidates, scoring, top-K, step, end_session), which is what the trainer's benchmark does.

`--behaviour N` also prints what N sessions of four reference policies (which read the hidden truth)
get: the objectives conflict (clicks vs purchases vs next-day returns).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core: no BLAS thread pool for the small matmuls
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from rewardloop_sim.recomind import EnvConfig, RecoMindEnv  # noqa: E402


class _Clock:
    """Wall time and this process's CPU time: on a shared machine the CPU rate is the one-core figure."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def cpu_seconds(self) -> float:
        return time.process_time() - self.cpu0

    def rates(self, n: int) -> tuple[float, float]:
        return n / (time.perf_counter() - self.wall0), n / self.cpu_seconds()


def bench_step(env: RecoMindEnv, n_steps: int) -> tuple[float, float]:
    user = 0
    slate = env.ideal_slate(user, env.candidates(user), env.config.slate_size)
    done = 0
    clock = _Clock()
    while done < n_steps:
        session = env.start_session(user)
        while not session.done:
            env.step(session, slate)
            done += 1
        env.end_session(session)
    return clock.rates(done)


def bench_candidates_step(env: RecoMindEnv, n_steps: int) -> tuple[float, float]:
    k = env.config.slate_size
    done = 0
    user = 0
    clock = _Clock()
    while done < n_steps:
        user = (user + 1) % env.n_users
        session = env.start_session(user)
        while not session.done:
            env.step(session, env.candidates(user)[:k])
            done += 1
        env.end_session(session)
    return clock.rates(done)


def bench_policy(env: RecoMindEnv, n_steps: int) -> tuple[float, float, float]:
    k = env.config.slate_size
    features = env.item_features()
    weights = np.random.default_rng(0).normal(size=(env.user_context_dim, env.item_feature_dim))
    done = sessions = 0
    user = 0
    clock = _Clock()
    while done < n_steps:
        user = (user + 1) % env.n_users
        session = env.start_session(user)
        while not session.done:
            cands = env.candidates(user)
            scores = features[cands] @ (env.user_context(user) @ weights)
            env.step(session, cands[np.argpartition(-scores, k - 1)[:k]])
            done += 1
        env.end_session(session)
        sessions += 1
    wall, cpu = clock.rates(done)
    return wall, cpu, sessions / clock.cpu_seconds()


def reference_policies(env: RecoMindEnv) -> dict[str, object]:
    cat = env.catalogue
    k = env.config.slate_size

    def top(score: np.ndarray, cands: np.ndarray) -> np.ndarray:
        return cands[np.argsort(-score, kind="stable")[:k]]

    return {
        "random": lambda u, c: c[:k],
        "relevance oracle": lambda u, c: env.ideal_slate(u, c, k),
        "clickbait seeker": lambda u, c: top(env.true_relevance(u, c) + cat.clickbait[c], c),
        "honest long-form": lambda u, c: top(
            env.true_relevance(u, c) + 0.3 * cat.long_form[c] - cat.clickbait[c], c
        ),
    }


def behaviour(seed: int, grounded: bool, n_sessions: int) -> None:
    print(f"\nreference policies, {n_sessions} sessions each (seed {seed}):")
    print(
        f"  {'policy':<18} {'steps':>6} {'CTR':>6} {'clicks':>7} {'dwell s':>8} {'buy %':>6} {'return %':>8}"
        f" {'business':>8}"
    )
    names = list(reference_policies(RecoMindEnv(seed, EnvConfig(), grounded=grounded)))
    for name in names:
        env = RecoMindEnv(seed, EnvConfig(), grounded=grounded)
        policy = reference_policies(env)[name]
        rng = np.random.default_rng(seed + 1)
        steps = clicks = buys = returns = 0
        dwell = business = 0.0
        for _ in range(n_sessions):
            user = int(rng.integers(env.n_users))
            session = env.start_session(user)
            while not session.done:
                env.step(session, policy(user, env.candidates(user)))  # type: ignore[operator]
            out = env.end_session(session)
            steps += out.n_steps
            clicks += out.n_clicks
            dwell += out.total_dwell_seconds
            buys += out.purchased
            returns += out.returned_next_day
            business += out.business_reward
        n = n_sessions
        ctr = clicks / (steps * env.config.slate_size)
        print(
            f"  {name:<18} {steps / n:>6.2f} {ctr:>6.3f} {clicks / n:>7.2f}"
            f" {dwell / n:>8.0f} {100 * buys / n:>6.1f} {100 * returns / n:>8.1f} {business / n:>8.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--grounded", action="store_true", help="the MovieLens-grounded world")
    parser.add_argument(
        "--behaviour", type=int, default=0, metavar="N", help="also run N sessions per reference policy"
    )
    args = parser.parse_args()
    env = RecoMindEnv(0, EnvConfig(), grounded=args.grounded)
    world = "grounded (MovieLens-100k)" if args.grounded else "synthetic"
    print(
        f"RecoMindEnv {world}: {env.catalogue.n_items} items, {env.n_users} users, K={env.config.slate_size}"
    )
    print(f"  {'slate steps/s':<22} {'per CPU-second':>15} {'per wall-second':>16}")
    wall, cpu = bench_step(env, args.steps)
    print(f"  {'step only':<22} {cpu:>15,.0f} {wall:>16,.0f}")
    wall, cpu = bench_candidates_step(env, args.steps)
    print(f"  {'candidates + step':<22} {cpu:>15,.0f} {wall:>16,.0f}")
    wall, cpu, sessions = bench_policy(env, args.steps)
    print(f"  {'linear policy loop':<22} {cpu:>15,.0f} {wall:>16,.0f}   ({sessions:,.0f} sessions/CPU-s)")
    if args.behaviour:
        behaviour(0, args.grounded, args.behaviour)


if __name__ == "__main__":
    main()
