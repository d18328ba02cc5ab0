"""Named points inside a round: the one place tests attach to a running loop.

The round walker (``rounds.py``) passes ``<step>:done`` after every step and the steps pass
the points in ``INNER_POINTS`` between a side effect and its record. In a normal run ``point``
does nothing. The crash harness (``tests/faults.py``) replaces ``hooks.point`` to kill the
process there; every caller looks it up through this module (``hooks.point(...)``, never a
``from``-import), so one patch reaches every step, wherever it lives.
"""

from __future__ import annotations

# Points inside steps, between an outside effect and the record of it: the riskiest places to die.
INNER_POINTS = ("dispatch:before_submit", "dispatch:after_submit", "collect:after_segment")


def point(name: str, round_: int) -> None:
    """A named point of round ``round_`` (no-op unless a test harness replaced this function)."""
    return None
