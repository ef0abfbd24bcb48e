"""The README block parser the docs runner (tests/host/test_readme.py) relies on."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.readme import Mode, ReadmeError, missing_output, parse

DOC = '''# Title

## Tour

<!-- readme-test
skip "ctctl enter web": interactive
fails "ctctl destroy web": it runs
retry 30 "ssh root@"
setup: touch x.iso
-->
```
$ ctctl create web --template busybox \\
        --ram 256M                     # a comment
Created web (id 100, template busybox)
$ ctctl enter web                      # a shell
$ ctctl destroy web
$ ssh root@<its address>
$ eval "$(ctctl completion bash)"      # quoted # stays
```

```
sudo ./setup.sh demo
```
'''


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "README.md"
    p.write_text(text)
    return p


def test_commands_markers_and_shown_output(tmp_path: Path) -> None:
    [block] = parse(write(tmp_path, DOC))
    assert block.section == "Tour" and block.setup == ["touch x.iso"]
    create, enter, destroy, ssh, comp = block.commands
    assert create.text == "ctctl create web --template busybox --ram 256M" and create.line == 12
    assert create.shown == ["Created web (id 100, template busybox)"] and create.mode is Mode.RUN
    assert (enter.mode, enter.reason) == (Mode.SKIP, "interactive")
    assert destroy.mode is Mode.FAILS and ssh.retry == 30
    assert comp.text == 'eval "$(ctctl completion bash)"'


@pytest.mark.parametrize("marker,error", [
    ('skip "ctctl gone": was removed', "matches no command"),
    ('fails "ctctl create"', "needs a reason"),
    ('frobnicate "x"', "unknown readme-test directive"),
])
def test_a_bad_or_stale_marker_is_an_error(tmp_path: Path, marker: str, error: str) -> None:
    text = DOC.replace('skip "ctctl enter web": interactive', marker)
    with pytest.raises(ReadmeError, match=error):
        parse(write(tmp_path, text))


def test_shown_output_matches_with_any_numbers_in_order() -> None:
    shown = ["ID   NAME  PID", "100  web   12345"]
    assert missing_output(shown, "ID NAME PID\n101 web 7\n") == []
    assert missing_output(shown, "101 web 7\nID NAME PID\n") == ["100  web   12345"]
    assert missing_output(["Created web"], "Created webs") == ["Created web"]
