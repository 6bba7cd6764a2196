"""Flap detection, Nagios style: a weighted percentage of state changes over the last 21 probes.

A target that goes down and comes back again and again must not trigger one automatic recovery
after another (each one resets breakers and clears caches under a dependency that is not really
fixed); a person has to look. Nagios' algorithm (``flapping.c``), kept as is so its thresholds
and documentation apply:

* keep the last ``HISTORY_SIZE`` (21) probe results of the target, oldest first;
* each of the 20 adjacent pairs that differs is a state change, weighted linearly from
  ``LOW_WEIGHT`` (0.75, the oldest change) to ``HIGH_WEIGHT`` (1.25, the newest), so recent
  changes count more;
* percent state change = 100 x (sum of the weights of the changes) / 20;
* a target *starts* flapping when the percentage is above ``high`` and *stops* when it falls
  below ``low``; between the two it keeps its previous flag (hysteresis, so the flag does not
  itself flap).

With fewer than 21 results the oldest one stands in for the missing ones, as Nagios initialises
its history with the first state: a new target has few changes and never flaps on its first
probes. The history lives in shared state (``SharedState.push_probe_history``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HISTORY_SIZE = 21
LOW_WEIGHT = 0.75
HIGH_WEIGHT = 1.25


def transition_weights(size: int = HISTORY_SIZE) -> list[float]:
    """Weight of the state change between result ``i`` and ``i + 1`` (oldest first)."""
    changes = size - 1
    if changes < 1:
        return []
    if changes == 1:
        return [HIGH_WEIGHT]
    step = (HIGH_WEIGHT - LOW_WEIGHT) / (changes - 1)
    return [LOW_WEIGHT + i * step for i in range(changes)]


_WEIGHTS = transition_weights()


def percent_state_change(history: Sequence[bool]) -> float:
    """Weighted state-change percentage (0..100) of up to 21 results, oldest first."""
    recent = list(history)[-HISTORY_SIZE:]
    if len(recent) < 2:
        return 0.0
    padded = [recent[0]] * (HISTORY_SIZE - len(recent)) + recent
    changes = sum(w for w, a, b in zip(_WEIGHTS, padded, padded[1:], strict=False) if a != b)
    return round(100.0 * changes / (HISTORY_SIZE - 1), 6)


@dataclass(frozen=True)
class FlapStatus:
    """The flap verdict of one target after its latest probe."""

    percent: float
    flapping: bool
    started: bool  # it was not flapping before this probe
    stopped: bool  # it was flapping before this probe

    @property
    def changed(self) -> bool:
        return self.started or self.stopped


def evaluate(history: Sequence[bool], was_flapping: bool, low: float, high: float) -> FlapStatus:
    """Apply the thresholds with hysteresis: start above ``high``, stop below ``low``."""
    if low > high:
        raise ValueError(f"flap low threshold {low} is above the high threshold {high}")
    percent = percent_state_change(history)
    if percent > high:
        flapping = True
    elif percent < low:
        flapping = False
    else:
        flapping = was_flapping
    return FlapStatus(
        percent=percent,
        flapping=flapping,
        started=flapping and not was_flapping,
        stopped=was_flapping and not flapping,
    )
