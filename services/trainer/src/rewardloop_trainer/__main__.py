"""``python -m rewardloop_trainer``: train the credit model from ``recsys.sessions`` or a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rewardloop_common.logging import configure_logging

from .service import (
    TrainerMetrics,
    TrainerSettings,
    parse_records,
    read_file,
    run_kafka,
    serve_metrics,
    train_round,
)

EPILOG = """environment (defaults in parentheses):
  OUTER_CREDIT_MODEL_DIR     where credit-model-v<N>.npz artefacts are written (required)
  KAFKA_BOOTSTRAP_SERVERS    (127.0.0.1:9092)    KAFKA_TOPIC_SESSIONS (recsys.sessions)
  TRAINER_CONSUMER_GROUP     (rewardloop-trainer) TRAINER_BATCH_SESSIONS (500) sessions per round
  TRAINER_EPOCHS (20)  TRAINER_LR (0.01)  TRAINER_GATE_WEIGHT (0.0)  TRAINER_HOLDOUT_FRACTION (0.2)
  TRAINER_OBJECTIVE          (decomposition) or reconstruction: how the credit model learns
  TRAINER_METRICS_PORT       (9103) Prometheus /metrics; 0 = off   TRAINER_METRICS_HOST (127.0.0.1)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rewardloop_trainer",
        description="Train the gated-attention credit model on closed sessions and write versioned artefacts "
        "that the outer controller loads (OUTER_CREDIT_MODEL_DIR).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--from-file", type=Path, metavar="SESSIONS.jsonl", help="one recsys.sessions record a line"
    )
    src.add_argument("--kafka", action="store_true", help="consume recsys.sessions")
    p.add_argument("--model-dir", help="overrides OUTER_CREDIT_MODEL_DIR")
    p.add_argument("--epochs", type=int, help="overrides TRAINER_EPOCHS")
    p.add_argument("--max-rounds", type=int, default=None, help="with --kafka: stop after N rounds")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="with --kafka: stop after this long (between polls)"
    )
    args = p.parse_args(argv)

    overrides: dict[str, object] = {}
    if args.model_dir:
        overrides["outer_credit_model_dir"] = args.model_dir
    if args.epochs is not None:
        overrides["trainer_epochs"] = args.epochs
    settings = TrainerSettings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_format, settings.log_level)
    if not settings.outer_credit_model_dir:
        p.error("set OUTER_CREDIT_MODEL_DIR or pass --model-dir")
    metrics = TrainerMetrics()
    if settings.trainer_metrics_port:
        serve_metrics(settings, metrics)
    if args.from_file is not None:
        try:
            records = parse_records(read_file(args.from_file), metrics)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        result = train_round(records, settings, metrics)
        print(
            f"{result.decision}: sessions={result.n_sessions} version={result.version} "
            f"loss={result.loss} holdout_mse={result.holdout_new} (current: {result.holdout_old})"
        )
        return 0 if result.decision != "skipped_too_few" else 1
    rounds = run_kafka(settings, metrics, args.max_rounds, args.max_seconds)
    print(f"kafka: {rounds} training round(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
