"""ctd/instance/admin.py on its own (no root): checks of the flags, tags and filters."""
from __future__ import annotations

import re

import pytest

from ctd.errors import Conflict, InvalidRequest
from ctd.instance import admin
from ctd.state import InstanceRecord, InstanceType, PowerState


def rec(**fields: object) -> InstanceRecord:
    r = InstanceRecord(id=100, name="web", type=InstanceType.CONTAINER, template="busybox", hostname="web",
                       privileged=False, idmap_base=None)
    for key, value in fields.items():
        setattr(r, key, value)
    return r


def test_a_change_merges_tags_and_clears_the_reason_on_enable() -> None:
    r = rec(tags={"a": "1", "b": "2"})
    admin.apply(r, admin.check_change({"disabled": True, "reason": "unpaid", "tags": {"a": None, "c": "3"}}))
    assert (r.disabled, r.disabled_reason, r.tags) == (True, "unpaid", {"b": "2", "c": "3"})
    admin.apply(r, admin.check_change({"disabled": False, "tags": {"b": ""}}))
    assert (r.disabled, r.disabled_reason, r.tags) == (False, "", {"c": "3"})


@pytest.mark.parametrize("body, why", [
    ({"disabled": "maybe"}, "true or false"),
    ({"stop": True}, "stop goes with disabled"),
    ({"disabled": False, "reason": "x"}, "reason goes with"),
    ({"reason": "a\nb", "disabled": True}, "U+000A"),
    ({"reason": "r" * 257, "disabled": True}, "at most 256"),
    ({"description": "\x00"}, "U+0000"),
    ({"description": "\u2066hidden"}, "U+2066"),
    ({"description": 5}, "must be a string"),
    ({"tags": {"": "v"}}, "invalid tag key"),
    ({"tags": {"-k": "v"}}, "invalid tag key"),
    ({"tags": {"k": 1}}, "must be a string"),
    ({"tags": {f"k{i}": "v" for i in range(65)}}, "at most 64"),
])
def test_bad_input_names_what_is_wrong(body: dict, why: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(why)):
        admin.check_change(body)


def test_a_running_instance_is_disabled_only_with_stop_and_tags_stay_bounded() -> None:
    with pytest.raises(Conflict, match="--stop"):
        admin.check_for(rec(), admin.check_change({"disabled": True}), running=True)
    admin.check_for(rec(), admin.check_change({"disabled": True, "stop": True}), running=True)
    full = rec(tags={f"k{i}": "v" for i in range(64)})
    with pytest.raises(InvalidRequest, match="would have 65 tags"):
        admin.check_for(full, admin.check_change({"tags": {"new": "v"}}), running=False)
    admin.check_for(full, admin.check_change({"tags": {"k1": None, "new": "v"}}), running=False)


def test_refusals_say_how_to_clear_the_flag() -> None:
    with pytest.raises(Conflict, match=r"web is disabled \(unpaid\); enable it with 'ctctl set web --disabled no'"):
        admin.refuse_start(rec(disabled=True, disabled_reason="unpaid"))
    with pytest.raises(Conflict, match=r"protected: destroy is refused.*'ctctl set web --protected no'"):
        admin.refuse_protected(rec(protected=True), "destroy")
    admin.refuse_start(rec())
    admin.refuse_protected(rec(), "destroy")


def test_filters() -> None:
    running = rec(state=PowerState.RUNNING, tags={"customer": "acme"})
    disabled = rec(disabled=True, tags={"customer": "zeta", "plan": "s"})
    f = admin.check_filter(["running"], ["customer=acme"])
    assert f.matches(running) and not f.matches(disabled)
    assert admin.check_filter(["disabled"], []).matches(disabled)
    assert admin.check_filter([], ["plan"]).matches(disabled) and not admin.check_filter([], ["plan"]).matches(running)
    assert admin.check_filter([], ["customer="]).matches(running) is False   # KEY= : the empty value
    with pytest.raises(InvalidRequest, match="unknown state"):
        admin.check_filter(["asleep"], [])
    with pytest.raises(InvalidRequest, match="at most 64 filters"):
        admin.check_filter([], [f"k{i}" for i in range(65)])
