"""Drive a simulated workload against a running stack, then print what the loop did.

Time is compressed: the simulator's event clock runs `--speedup` times faster than the wall clock,
starting now. The outer controller closes sessions on *event time* (its clock is the max event time
it has seen, or the wall clock if later), so the real 30-minute session gap is honoured while a one
minute run still covers hours of user activity.

A run therefore leaves the controller's clock hours ahead of the wall clock (60 s x 240 = 4 h). The
next run, if it started its clock at "now", would send only events the controller must treat as late
(amendments of old sessions, or too late to place), and no session would close. So the clock starts
at the later of now and one session gap after the newest event already on the input topics.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from dataclasses import dataclass

from pydantic import Field
from tqdm import tqdm

from rewardloop_common.settings import CommonSettings

from .clients import GatewayClient, ScorerClient
from .recomind_world import RecoMindWorld
from .summary import collect_summary, print_summary
from .topics import newest_event_time_ms
from .world import World


class SimSettings(CommonSettings):
    """Where the stack is: the same env vars the services use (docs/architecture.md)."""

    inner_reward_grpc_addr: str = "127.0.0.1:50051"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    outer_session_gap_seconds: float = Field(default=1800.0, gt=0)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"


@dataclass
class RunStats:
    slates: int = 0
    actions_scored: int = 0
    sessions_started: int = 0
    sessions_ended: int = 0
    purchases: int = 0
    revenue: float = 0.0
    versions_seen: set[int] | None = None


def simulate(
    settings: SimSettings,
    *,
    duration_s: float,
    users: int,
    speedup: float,
    seed: int,
    progress: bool = True,
    world_kind: str = "basic",
    grounded: bool = False,
) -> RunStats:
    """Run users through sessions for `duration_s` wall seconds; returns what was sent."""
    world: World | RecoMindWorld
    if world_kind == "recomind":
        world = RecoMindWorld(n_users=users, seed=seed, grounded=grounded)
    elif world_kind == "basic":
        world = World(n_users=users, seed=seed)
    else:
        raise ValueError(f"world_kind must be 'basic' or 'recomind', got {world_kind!r}")
    scorer = ScorerClient(settings.inner_reward_grpc_addr)
    gateway = GatewayClient(settings.gateway_url)
    scorer.wait_ready()
    gap_ms = int(settings.outer_session_gap_seconds * 1000)
    stats = RunStats(versions_seen=set())

    sim0_ms = start_of_event_clock(settings, gap_ms, int(time.time() * 1000))
    wall0 = time.monotonic()

    def sim_now_ms() -> int:
        return sim0_ms + int((time.monotonic() - wall0) * 1000 * speedup)

    # first sessions start spread over the first half hour of simulated time
    agenda = [(sim0_ms + world.rng.randrange(0, 30 * 60_000), u) for u in range(users)]
    heapq.heapify(agenda)
    bar = tqdm(total=int(duration_s), unit="s", desc="simulating", disable=not progress)
    last_tick = 0
    try:
        while (elapsed := time.monotonic() - wall0) < duration_s:
            if int(elapsed) > last_tick:
                bar.update(int(elapsed) - last_tick)
                last_tick = int(elapsed)
                bar.set_postfix(actions=stats.actions_scored, purchases=stats.purchases)
            due_ms, u = agenda[0]
            now_ms = sim_now_ms()
            if due_ms > now_ms:
                time.sleep(min(0.02, (due_ms - now_ms) / 1000 / speedup))
                continue
            heapq.heappop(agenda)
            next_ms = _step_user(world, u, due_ms, gap_ms, scorer, gateway, stats)
            heapq.heappush(agenda, (next_ms, u))
    finally:
        bar.close()
        scorer.close()
        gateway.close()
    return stats


def start_of_event_clock(settings: SimSettings, gap_ms: int, now_ms: int) -> int:
    """`now_ms`, or one session gap after the newest event on the input topics when that is later
    (what an earlier run left: its sessions all close, and none of this run's events is late)."""
    newest = newest_event_time_ms(
        settings.kafka_bootstrap_servers, (settings.kafka_topic_reward_raw, settings.kafka_topic_kpi_raw)
    )
    if newest is None or newest + gap_ms <= now_ms:
        return now_ms
    start = newest + gap_ms
    print(
        f"event clock starts {(start - now_ms) / 3_600_000:.1f} h ahead of the wall clock: "
        "one session gap after the newest event an earlier run left on Kafka",
        file=sys.stderr,
    )
    return start


def _step_user(
    world: World | RecoMindWorld,
    u: int,
    t_ms: int,
    gap_ms: int,
    scorer: ScorerClient,
    gateway: GatewayClient,
    stats: RunStats,
) -> int:
    """One slate for user `u` at event time `t_ms`; returns the event time of the user's next action."""
    user = world.users[u]
    if not user.in_session:
        user.in_session = True
        user.session_no += 1
        user.step_no = 0
        user.session_dwell = 0.0
        user.session_clicked = []
        stats.sessions_started += 1
    user.step_no += 1
    session_id = f"{user.user_id}-s{user.session_no}"
    shown = world.react(user, world.serve_slate(user))
    response = scorer.score_slate(user, session_id, shown, t_ms)
    stats.slates += 1
    stats.actions_scored += len(response.rewards)
    assert stats.versions_seen is not None
    stats.versions_seen.update(r.weights_version for r in response.rewards)
    if world.continues(user, shown):
        return t_ms + world.step_gap_ms()
    user.in_session = False
    stats.sessions_ended += 1
    purchase = world.purchase(user)
    if purchase is not None:
        gateway.post_purchase(user, session_id, purchase, t_ms + 60_000)
        stats.purchases += 1
        stats.revenue += purchase.revenue
    return t_ms + world.idle_gap_ms(gap_ms)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardloop-sim",
        description=(
            "Simulated users acting as the serving layer: each step serves a slate (softmax policy, "
            "logged propensities), the users click / dwell / skip, the slate is scored by the inner-reward "
            "service over gRPC, and sparse purchases go to the gateway over HTTP. Event time runs "
            "--speedup times faster than the wall clock so sessions (30-minute gap) close within a short "
            "run; it starts now, or one session gap after the newest event an earlier run left on Kafka "
            "when that is later (else the outer controller would see only late events). Addresses come "
            "from the services' env vars (INNER_REWARD_GRPC_ADDR, GATEWAY_PORT, "
            "KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, OUTER_SESSION_GAP_SECONDS)."
        ),
    )
    parser.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds to run (default 60)")
    parser.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    parser.add_argument(
        "--speedup", type=float, default=240.0, help="simulated seconds per wall second (default 240)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--settle",
        type=float,
        default=15.0,
        help="seconds to wait after the load for the outer loop to catch up before the summary (default 15)",
    )
    parser.add_argument(
        "--world",
        choices=("basic", "recomind"),
        default="basic",
        help="basic: the walking-skeleton world; recomind: RecoMindEnv (clickbait, pivots, price anchors)",
    )
    parser.add_argument(
        "--grounded", action="store_true", help="with --world recomind: MovieLens-100k users and movies"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grounded and args.world != "recomind":
        parser.error("--grounded needs --world recomind")
    settings = SimSettings()
    started_ms = int(time.time() * 1000)
    stats = simulate(
        settings,
        duration_s=args.duration,
        users=args.users,
        speedup=args.speedup,
        seed=args.seed,
        progress=not args.no_progress,
        world_kind=args.world,
        grounded=args.grounded,
    )
    summary = collect_summary(settings, stats, since_ms=started_ms, settle_s=args.settle)
    print_summary(summary)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
