"""Checks of client input: names, hostnames, ids and body fields; errors say what to do."""
from __future__ import annotations

import pytest

from ctd import validate
from ctd.errors import InvalidRequest


@pytest.mark.parametrize("name", ["a", "web", "web-1", "1web", "0a", "a" * 63, "x-", "a--b", "9-9"])
def test_instance_name_accepts(name: str) -> None:
    assert validate.instance_name(name) == name


@pytest.mark.parametrize("name", [
    "", "../x", "a/b", "Web", "WEB", "-web", "a" * 64, "123", "0", "a_b", "a.b", "a b", " a",
    "a\n", "web\n", "\na", "a\0", "é", "..", ".",
    None, 5, 5.0, True, ["web"], {"name": "web"}, b"web",
])
def test_instance_name_refuses(name: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate.instance_name(name)
    msg = e.value.message
    assert repr(name) in msg, "the message quotes what was wrong"
    assert "lowercase letters, digits and '-'" in msg and "1-63" in msg, "and says what to use"
    assert e.value.code == "invalid"


def test_instance_name_uses_the_callers_word() -> None:
    with pytest.raises(InvalidRequest, match="^invalid template name 'Bad'"):
        validate.instance_name("Bad", "template name")


@pytest.mark.parametrize("ref", ["100", "1", "web", "web-2"])
def test_instance_ref_accepts_names_and_ids(ref: str) -> None:
    assert validate.instance_ref(ref) == ref


@pytest.mark.parametrize("ref", ["../etc", "Web", "", "a/b", "²", "١٢", "1\n"])
def test_instance_ref_refuses(ref: str) -> None:
    # non-ASCII digits pass str.isdigit() but are no ids ('²' would crash int())
    with pytest.raises(InvalidRequest, match="instance name or id"):
        validate.instance_ref(ref)


@pytest.mark.parametrize("host", ["web", "Web", "web.example.com", "a-b.c-d", "x" * 63, "1.2.3.4",
                                  ".".join(["a" * 63] * 3) + "." + "b" * 61])
def test_hostname_accepts(host: str) -> None:
    assert validate.hostname(host) == host


@pytest.mark.parametrize("host", [
    "", "-web", "web-", "a..b", ".web", "web.", "we b", "web_1", "x" * 64, "a\n", "web\n",
    ".".join(["a" * 63] * 4),  # 255 characters
    None, 1, ["web"],
])
def test_hostname_refuses(host: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate.hostname(host)
    assert repr(host) in e.value.message and "labels of letters, digits and '-'" in e.value.message


@pytest.mark.parametrize("value", [1, 100, validate.MAX_INSTANCE_ID])
def test_instance_id_accepts(value: int) -> None:
    assert validate.instance_id(value) == value


@pytest.mark.parametrize("value", [0, -1, validate.MAX_INSTANCE_ID + 1, True, False, 1.0, "100", None])
def test_instance_id_refuses(value: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate.instance_id(value)
    assert repr(value) in e.value.message and f"from 1 to {validate.MAX_INSTANCE_ID}" in e.value.message


def test_body_fields() -> None:
    body = {"name": "web", "template": "busybox"}
    assert validate.body_fields(body, {"name", "template", "id"}, {"name"}) is body
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        validate.body_fields(["name"], {"name"})
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        validate.body_fields(None, {"name"})
    with pytest.raises(InvalidRequest) as e:
        validate.body_fields({"name": "x", "zzz": 1, "aaa": 2}, {"name", "id"})
    assert e.value.message == "unknown field(s) aaa, zzz; allowed: id, name"
    with pytest.raises(InvalidRequest) as e:
        validate.body_fields({"id": 1}, {"name", "template", "id"}, {"name", "template"})
    assert e.value.message == "missing field(s): name, template"


def test_boolean() -> None:
    assert validate.boolean({}, "force") is False
    assert validate.boolean({}, "force", default=True) is True
    assert validate.boolean({"force": True}, "force") is True
    for bad in ("true", 1, 0, None, "yes"):
        with pytest.raises(InvalidRequest, match=f"force must be true or false, got {bad!r}"):
            validate.boolean({"force": bad}, "force")


def test_number() -> None:
    assert validate.number({}, "timeout", 30, 0, 3600) == 30.0
    assert validate.number({"timeout": 0}, "timeout", 30, 0, 3600) == 0.0
    assert validate.number({"timeout": 2.5}, "timeout", 30, 0, 3600) == 2.5
    assert isinstance(validate.number({"timeout": 7}, "timeout", 30, 0, 3600), float)
    for bad in (-1, 3601, True, "10", None, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest) as e:
            validate.number({"timeout": bad}, "timeout", 30, 0, 3600)
        assert e.value.message == f"timeout must be a number from 0 to 3600, got {bad!r}"


def test_string_list() -> None:
    assert validate.string_list({}, "cmd") == []
    assert validate.string_list({"cmd": []}, "cmd") == []
    assert validate.string_list({"cmd": ["ls", "-l"]}, "cmd", required=True) == ["ls", "-l"]
    with pytest.raises(InvalidRequest, match="^cmd must be a non-empty list of strings$"):
        validate.string_list({}, "cmd", required=True)
    with pytest.raises(InvalidRequest, match="^cmd must be a non-empty list of strings$"):
        validate.string_list({"cmd": []}, "cmd", required=True)
    for bad in ("ls", ["ls", 1], [None], {"a": "b"}):
        with pytest.raises(InvalidRequest, match="^cmd must be a list of strings$"):
            validate.string_list({"cmd": bad}, "cmd")
    with pytest.raises(InvalidRequest, match="NUL"):
        validate.string_list({"cmd": ["ls", "a\0b"]}, "cmd")
