"""The web console in headless Chromium: how long the page takes to load and to show the list
after login, what it downloads, and a keystroke's round trip through the exec WebSocket.

    sudo /work/main/.venv/bin/python bench/webconsole.py [--keystrokes 200]

A private ctd (dir storage, own state dir and cgroup name) with HTTPS on 127.0.0.1 and one
running busybox container. The round trip is measured inside the page: a WebSocket to
`exec?cmd=cat&tty=1` (the token as a subprotocol, like the page's shell), one letter sent, the time
until the pty echoes that letter back (browser -> TLS -> ctd -> pty -> container and back; xterm.js
drawing not included). Needs Debian's chromium and chromium-driver and selenium (setup.sh test).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from ctd_side import https_daemon  # noqa: E402
from https_part import finish, free_port, summary  # noqa: E402 - summary: n, p50, p99, max

ROUND_TRIPS = """
const [name, token, count, done] = arguments;
const ws = new WebSocket(`wss://${location.host}/1.0/instances/${name}/exec?cmd=cat&tty=1`,
                         ["ctd.v1", "ctd.bearer." + token]);
ws.binaryType = "arraybuffer";
const samples = [];
let t0 = 0, got = "", key = "";
const next = () => {   // a new letter each time: a late echo of the last one must not count
  if (samples.length >= count) { ws.close(); done(samples); return; }
  key = String.fromCharCode(97 + samples.length % 26);
  got = ""; t0 = performance.now(); ws.send(new TextEncoder().encode(key));
};
ws.onopen = () => setTimeout(next, 300);
ws.onmessage = (ev) => {
  if (typeof ev.data === "string") return;
  got += new TextDecoder().decode(new Uint8Array(ev.data).subarray(1));
  if (got.includes(key)) { samples.push(performance.now() - t0); next(); }
};
ws.onerror = () => done({error: "websocket failed"});
"""


def chromium(profile: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--ignore-certificate-errors", "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_script_timeout(300)
    return driver


def wait(check, timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the page did not get there")
        time.sleep(0.005)
    return (time.perf_counter() - t0) * 1000


def measure(url: str, token: str, name: str, keystrokes: int, loads: int) -> dict:
    profile = tempfile.mkdtemp(prefix="ctd-bench-chromium-")
    driver = chromium(profile)
    try:
        load_ms, list_ms = [], []
        for _ in range(loads):
            t0 = time.perf_counter()
            driver.get(url)
            wait(lambda: driver.find_element(By.ID, "token").is_displayed())
            load_ms.append((time.perf_counter() - t0) * 1000)
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.ID, "login-button").click()
            list_ms.append(wait(lambda: driver.execute_script(
                "return document.querySelectorAll('#instances tbody tr').length") > 0))
            driver.execute_script("sessionStorage.clear()")
        samples = driver.execute_async_script(ROUND_TRIPS, name, token, keystrokes)
        if isinstance(samples, dict):
            raise RuntimeError(samples["error"])
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {"page_load_to_login_form": summary(load_ms), "login_to_list": summary(list_ms),
            **sizes(),
            "keystroke_round_trip": summary(samples)}


def sizes() -> dict[str, int]:
    """What a browser downloads (uncompressed; ctd sends files as they are): the page, then the
    terminal's modules on the first Console or Shell, the display's on the first Display."""
    static = HERE.parent / "ctd" / "web" / "static"
    page = sum((static / f).stat().st_size for f in ("index.html", "app.js", "app.css", "vendor/xterm/xterm.css"))
    terminal = sum((static / "vendor" / "xterm" / f).stat().st_size for f in ("xterm.mjs", "addon-fit.mjs"))
    display = sum(f.stat().st_size for f in (static / "vendor" / "novnc").rglob("*.js"))
    return {"page_bytes": page, "terminal_bytes": terminal, "display_bytes_at_most": display}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keystrokes", type=int, default=200)
    p.add_argument("--loads", type=int, default=10)
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    port = free_port()
    with https_daemon("ctd-bench-web-", port, 'default_network = ""\n') as (ctd, errors):   # no NIC: no bridge
        ctd.create("bench-web")
        ctd.start_ct("bench-web")
        token = ctd.client.request("POST", "/1.0/tokens", {"name": "bench"})["token"]["secret"]
        result = measure(f"https://127.0.0.1:{port}/console/", token, "bench-web", args.keystrokes, args.loads)
    print(json.dumps(result, indent=2))
    print(f"web console: page to login form p50 {result['page_load_to_login_form']['p50_ms']} ms, login to list "
          f"p50 {result['login_to_list']['p50_ms']} ms; {result['page_bytes'] // 1024} KiB page, "
          f"+{result['terminal_bytes'] // 1024} KiB terminal; keystroke round trip p50 "
          f"{result['keystroke_round_trip']['p50_ms']} ms p99 {result['keystroke_round_trip']['p99_ms']} ms",
          file=sys.stderr)
    return finish(result, args.output, errors)


if __name__ == "__main__":
    sys.exit(main())
