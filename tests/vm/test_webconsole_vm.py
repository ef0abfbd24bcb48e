"""A VM's display in the web console: noVNC in headless Chromium, QEMU's VNC reached only through
ctd's WebSocket (its unix socket; no VNC port on the network). Under TCG here.

Slow: QEMU starts a VM with an empty disk; its firmware draws on the display within seconds."""
from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import Daemon
from tests.host.test_webconsole import (  # noqa: F401 - fixtures: browser, daemon
    browser,
    buttons,
    click,
    daemon,
    get,
    login,
    state_of,
    token,
    upgrade,
    wait_for,
)

pytestmark = pytest.mark.slow

DRAWN = """
const c = document.querySelector('#screen canvas');
if (!c || !c.width || !c.height || c.getBoundingClientRect().height < 100) return 0;   // drawn and shown
const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 150) lit++;
return lit;
"""


def listening_tcp_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":   # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_an_admin_sees_a_vms_display_through_ctd(daemon: Daemon, browser: WebDriver,  # noqa: F811
                                                 tmp_path: Path) -> None:
    name = daemon.unique("vmweb")
    before = listening_tcp_ports()
    daemon.ok("create", name, "--type", "vm", "--disk", "64M", "--ram", "256M")
    try:
        daemon.ok("start", name)
        assert not {p for p in listening_tcp_ports() - before if 5900 <= p < 6000}, "no VNC port is opened"
        login(browser, daemon, token(daemon, "admin"))
        wait_for("the running VM", lambda: state_of(browser, name) == "running")
        assert "Display" in buttons(browser, name) and "Shell" not in buttons(browser, name)
        click(browser, name, "Display")
        screen = browser.find_element(By.ID, "screen")
        wait_for("noVNC connected", lambda: screen.get_attribute("data-state") == "connected", 60)
        wait_for("the firmware's text on the display", lambda: browser.execute_script(DRAWN) > 500, 120)
        browser.save_screenshot(str(tmp_path / "webconsole-vm-display.png"))
        admin = {"Authorization": f"Bearer {token(daemon, 'admin')}"}
        status, _, body = get(daemon, f"/1.0/instances/{name}/vnc", admin)
        assert status == 400 and b"WebSocket" in body, "a plain GET: no VNC session opened"
        daemon.ok("stop", name, "--kill")
        assert get(daemon, f"/1.0/instances/{name}/vnc", admin)[0] == 409
    finally:
        daemon.ctl("destroy", name, "--force")


def test_a_container_has_no_display(daemon: Daemon) -> None:  # noqa: F811
    name = daemon.unique("novnc")
    daemon.ok("create", name, "--template", "busybox")
    try:
        status, _ = upgrade(daemon, f"/1.0/instances/{name}/vnc", token(daemon, "admin"))
        assert status == 400
    finally:
        daemon.ctl("destroy", name, "--force")
