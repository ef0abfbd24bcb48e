"""Replication settings (ctd/cluster/replicate.py) without a cluster."""

from __future__ import annotations

import pytest

from ctd.cluster.replicate import Replication, duration_text, parse_every
from ctd.errors import InvalidRequest


def test_intervals_parse_and_print() -> None:
    assert parse_every("5m") == 300 and parse_every("30s") == 30 and parse_every(" 2H ") == 7200
    assert parse_every("90") == 90 and parse_every(600) == 600 and parse_every("7d") == 7 * 86400
    assert duration_text(300) == "5m" and duration_text(90) == "90s" and duration_text(86400) == "1d"


@pytest.mark.parametrize("bad", ["", "5", "9s", "8d", "5 m", "-5m", "1e3", "5w", True, None, 3.5, "x" * 1000, [5]])
def test_hostile_intervals_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="every must be an interval from 10s to 7d"):
        parse_every(bad)


def test_a_hand_written_setting_is_ignored_not_trusted() -> None:
    assert Replication.from_json({"target": "n2", "every": 60, "ha": True}) == Replication("n2", 60, True)
    for raw in ({"target": 5, "every": 60}, {"target": "n2", "every": True}, {"target": "n2", "every": 1},
                {"target": "n2", "every": 60, "ha": "yes"}, [], "n2", None):
        assert Replication.from_json(raw) is None
