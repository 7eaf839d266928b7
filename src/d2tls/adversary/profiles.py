"""Hypothesis profiles for the attacker-model properties, and counts of adversary actions.

``D2TLS_HYPOTHESIS_PROFILE`` selects the profile (default ``attacker``):

- ``attacker``: bounded, for the default suite (all attacker tests together: about 80 s);
- ``soak``: at least 10,000 examples per property, no deadline; counts of the adversary actions
  tried are printed per property and written as JSON to ``D2TLS_SOAK_REPORT`` when set.
  ``D2TLS_SOAK_EXAMPLES`` and ``D2TLS_SOAK_STEPS`` override the examples per process and the
  steps per example, so that one property can be run in shards (e.g. 4 x 2,500 examples,
  counts summed by ``python -m d2tls.adversary.profiles FILE...``).

Only tests import this module (hypothesis is a test dependency).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

PROFILE_ENV = "D2TLS_HYPOTHESIS_PROFILE"
REPORT_ENV = "D2TLS_SOAK_REPORT"
SOAK_EXAMPLES = 10_000
EXAMPLES_ENV = "D2TLS_SOAK_EXAMPLES"
STEPS_ENV = "D2TLS_SOAK_STEPS"

#: Adversary actions tried, per property (test name).
ACTIONS: dict[str, Counter[str]] = {}
#: Examples run, per property.
EXAMPLES: Counter[str] = Counter()


def profile_name() -> str:
    return os.environ.get(PROFILE_ENV, "attacker")


def is_soak() -> bool:
    return profile_name() == "soak"


def attacker_settings(examples: int, steps: int = 40) -> settings:
    """Settings of one property: ``examples`` by default, SOAK_EXAMPLES in the soak profile."""
    common = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
        "stateful_step_count": steps,
        "print_blob": True,
    }
    if is_soak():
        common["stateful_step_count"] = int(os.environ.get(STEPS_ENV, steps))
        examples = int(os.environ.get(EXAMPLES_ENV, SOAK_EXAMPLES))
        return settings(max_examples=examples, **common)  # type: ignore[arg-type]
    return settings(max_examples=examples, **common)  # type: ignore[arg-type]


def count(prop: str, actions: Counter[str]) -> None:
    """Add one example's adversary actions to the totals of ``prop``."""
    ACTIONS.setdefault(prop, Counter()).update(actions)
    EXAMPLES[prop] += 1
    if is_soak() and os.environ.get(REPORT_ENV) and EXAMPLES[prop] % 100 == 0:
        report()  # progress of a long soak run survives an interruption


def report() -> str:
    """A human-readable summary, and JSON to $D2TLS_SOAK_REPORT when set."""
    lines = []
    for prop in sorted(ACTIONS):
        total = sum(ACTIONS[prop].values())
        detail = ", ".join(f"{k}={v}" for k, v in sorted(ACTIONS[prop].items()))
        lines.append(f"{prop}: {EXAMPLES[prop]} examples, {total} actions ({detail})")
    target = os.environ.get(REPORT_ENV)
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {}
        for prop in ACTIONS:
            data[prop] = {"examples": EXAMPLES[prop], "actions": dict(ACTIONS[prop])}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Sum the JSON reports of several soak shards, per property."""
    total: dict[str, dict[str, Any]] = {}
    for path in paths:
        for prop, entry in json.loads(path.read_text()).items():
            into = total.setdefault(prop, {"examples": 0, "actions": Counter()})
            into["examples"] += entry["examples"]
            into["actions"].update(entry["actions"])
    return total


def main(argv: list[str] | None = None) -> int:
    """Print the summed counts of soak shards: ``python -m d2tls.adversary.profiles FILE...``."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    for prop, entry in sorted(merge(paths).items()):
        actions = entry["actions"]
        detail = ", ".join(f"{k}={v}" for k, v in sorted(actions.items()))
        print(f"{prop}: {entry['examples']} examples, {sum(actions.values())} actions ({detail})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
