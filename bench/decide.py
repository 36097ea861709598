"""Benchmark of the decision core alone (no I/O, no decoding): events/s on one core.

Builds a realistic mix of the three kinds with the seeded generator, validates it once up front, then
times `Decider.decide` over all events. Usage: python bench/decide.py [--events N] [--repeat R]
Target (issue 2): at least 300,000 events/s on one core of the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from flowaudit.common.tuning import tune_process
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import load_policy
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR


def main() -> None:
    tune_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    policy = load_policy(DEFAULT_POLICY_DIR)
    generator = EventGenerator(policy, seed=args.seed)
    events = [event_from_mapping(raw, policy) for raw in generator.events(args.events)]
    kinds = {
        kind: sum(1 for e in events if e.event_type == kind)
        for kind in sorted({e.event_type for e in events})
    }

    # The prebuilt inputs are long-lived; keep the cyclic GC from rescanning them on every collection
    # (a running worker never holds 200,000 events at once). Decisions are not kept, as in the service.
    gc.collect()
    gc.freeze()
    rates = []
    blocked = 0
    for _ in range(args.repeat):
        decider = Decider(policy)  # fresh memos each round: they start cold
        decide = decider.decide
        blocked = 0
        started = time.perf_counter()
        for event in events:
            if decide(event).rules:
                blocked += 1
        elapsed = time.perf_counter() - started
        rates.append(len(events) / elapsed)
    best, median = max(rates), sorted(rates)[len(rates) // 2]
    report = {
        "events": len(events),
        "kinds": kinds,
        "blocked": blocked,
        "events_per_second_median": round(median),
        "events_per_second_best": round(best),
        "target": 300_000,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"decision core: {len(events):,} events ({kinds}), {blocked:,} blocked")
        print(
            f"  median {median:,.0f} events/s, best {best:,.0f} events/s "
            f"over {args.repeat} runs (target 300,000)"
        )


if __name__ == "__main__":
    main()
