"""The latency gate shared by the Locust scenarios in loadtests/ (``--p99-budget-ms``).

    import budget
    budget.install("gateway_http")

adds ``--p99-budget-ms`` to Locust's command line (once per process, so several locustfiles can
share it) and, when Locust quits, sets exit code 1 if the overall P99 exceeds the budget, any request
failed, or nothing was sent. 0 (the default) turns the gate off. Locust puts the locustfile's directory
on ``sys.path``, which is how the scenarios import this module.
"""

from __future__ import annotations

from typing import Any

from locust import events

_scenarios: list[str] = []


def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--p99-budget-ms",
        type=float,
        default=0.0,
        help="exit non-zero when the overall P99 latency (ms) exceeds this or any request failed (0: off)",
    )


def verdict(environment: Any, budget_ms: float) -> tuple[bool, str]:
    """(passed, one-line summary) of the run so far against ``budget_ms``."""
    total = environment.stats.total
    p99 = total.get_response_time_percentile(0.99) or 0.0
    ok = total.num_requests > 0 and total.num_failures == 0 and p99 <= budget_ms
    line = (
        f"{'/'.join(_scenarios) or 'locust'}: {total.num_requests} requests, {total.num_failures} failures, "
        f"P99 {p99:.1f} ms (budget {budget_ms:g} ms): {'PASS' if ok else 'FAIL'}"
    )
    return ok, line


def _enforce(environment: Any, **_kwargs: Any) -> None:
    opts = environment.parsed_options
    budget_ms = getattr(opts, "p99_budget_ms", 0.0) if opts else 0.0
    if not budget_ms:
        return
    ok, line = verdict(environment, budget_ms)
    print(line)
    if not ok:
        environment.process_exit_code = 1


def install(scenario: str) -> None:
    """Register the gate for ``scenario`` (its name in the PASS/FAIL line)."""
    if not _scenarios:
        events.init_command_line_parser.add_listener(_add_arguments)
        events.quitting.add_listener(_enforce)
    if scenario not in _scenarios:
        _scenarios.append(scenario)
