"""API fuzzing with schemathesis against the schema ctd serves, and bad input to every ctctl verb.

The daemon only listens on a unix socket; a loopback TCP proxy started for the test lets
schemathesis' requests session reach it. Checks: no 5xx, the daemon still answers, and
nothing exists afterwards that no accepted request created.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import click
import pytest
import requests

from ctctl.client import ApiError
from tests.conftest import REPO, Daemon
from tests.robustness.audit import settled_audit
from tests.robustness.proxy import UnixProxy

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extra)")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("CTD_FUZZ_EXAMPLES", "60"))
WEBSOCKET = ("/1.0/instances/{ref}/exec", "/1.0/instances/{ref}/console")
# Accepted positive requests here would touch the host beyond the daemon's own objects: a
# template build may fetch a distribution (network traffic), a network is a host bridge (with
# NAT: forwarding on). They are fuzzed with invalid data only.
NEGATIVE_ONLY = {("POST", "/1.0/templates"), ("POST", "/1.0/networks")}
# Kept alive so instance paths reach real handlers instead of 404.
TARGET, SNAP = "fz", "fs1"


def inventory(d: Daemon) -> dict[str, set[str]]:
    c = d.client
    return {
        "instances": {i["name"] for i in c.get("/1.0/instances")["instances"]},
        "networks": {n["name"] for n in c.get("/1.0/networks")["networks"]},
        "templates": {t["name"] for t in c.get("/1.0/templates")["templates"] if t["built"]},
        "snapshots": set(c.get(f"/1.0/instances/{TARGET}/snapshots")["snapshots"])
        if TARGET in {i["name"] for i in c.get("/1.0/instances")["instances"]} else set(),
    }


CREATES = {("POST", "/1.0/instances"): "instances", ("POST", "/1.0/instances/{ref}/clone"): "instances",
           ("POST", "/1.0/networks"): "networks", ("POST", "/1.0/templates"): "templates",
           ("POST", "/1.0/instances/{ref}/snapshots"): "snapshots"}


def short_stop(case):  # type: ignore[no-untyped-def]
    """A stop queued right behind a start can reach the new init before it blocks its signals;
    the kernel drops it and the stop waits its whole timeout (up to 3600 s is valid) before
    SIGKILL. Until ctd repeats the stop signal, keep the fuzzer's stop timeouts short."""
    body = case.body
    if isinstance(body, dict) and type(body.get("timeout")) in (int, float) and body["timeout"] > 1:
        body["timeout"] = 1
    return case


def no_host_nat(case):  # type: ignore[no-untyped-def]
    """A NAT network switches on the host's IPv4 forwarding (ctd's fuzzed daemon runs in the
    host's network namespace): the fuzzer's networks never ask for it. NAT itself is tested in a
    namespace of its own (tests/host/test_network_nat.py)."""
    body = case.body
    if isinstance(body, dict) and body.get("nat") is True:
        body["nat"] = False
    return case


class Fuzz:
    """Runs one hypothesis search per (operation, mode, target) and records what happened."""

    def __init__(self, d: Daemon, base_url: str, examples: int = EXAMPLES) -> None:
        self.d = d
        self.examples = examples
        self.base_url = base_url
        self.session = requests.Session()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.requests = 0
        self.failures: list[str] = []
        self.accepted: dict[str, set[str]] = collections.defaultdict(set)

    def call(self, case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=self.base_url, session=self.session, timeout=60)
        self.requests += 1
        self.statuses[response.status_code] += 1
        key = (case.method.upper(), case.operation.path)
        if response.status_code < 300 and key in CREATES and isinstance(case.body, dict):
            self.accepted[CREATES[key]].add(str(case.body.get("name")))
        if response.status_code >= 500:
            raise AssertionError(f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r} "
                                 f"-> {response.status_code} {response.text[:300]}")
        if response.status_code >= 400:
            body = response.json()
            assert set(body) >= {"error", "code"} and "\n" not in body["error"], body

    def run(self, operation, mode, **strategy_kw) -> None:  # type: ignore[no-untyped-def]
        strategy = operation.as_strategy(generation_mode=mode, **strategy_kw).map(short_stop).map(no_host_nat)

        @hypothesis.settings(max_examples=self.examples, deadline=None, database=None, derandomize=True,
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                             suppress_health_check=list(hypothesis.HealthCheck),
                             verbosity=hypothesis.Verbosity.quiet)
        @hypothesis.given(case=strategy)
        def search(case) -> None:  # type: ignore[no-untyped-def]
            self.call(case)

        try:
            search()
        except AssertionError as exc:
            self.failures.append(f"{operation.label} ({mode.value}{', ' + str(strategy_kw) if strategy_kw else ''}): "
                                 f"{str(exc).splitlines()[0][:600]}")
        except hypothesis.errors.Unsatisfiable:
            pass


def test_schemathesis_finds_no_server_error(module_ctd: Daemon) -> None:
    d = module_ctd
    d.client.run("POST", "/1.0/instances", {"name": TARGET, "template": "busybox"})
    d.client.run("POST", f"/1.0/instances/{TARGET}/snapshots", {"name": SNAP})
    d.client.run("PUT", f"/1.0/instances/{TARGET}/state", {"action": "start"})
    before = inventory(d)
    started = time.monotonic()
    with UnixProxy(str(d.socket)) as proxy:
        schema = schemathesis.openapi.from_url(f"{proxy.url}/1.0/openapi.json")
        fuzz = Fuzz(d, proxy.url)
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 20
        for op in operations:
            if op.path in WEBSOCKET:
                continue
            key = (op.method.upper(), op.path)
            for mode in schemathesis.GenerationMode:
                if mode is schemathesis.GenerationMode.POSITIVE and key in NEGATIVE_ONLY:
                    continue
                fuzz.run(op, mode)  # random names: the 404 paths
                if "{ref}" in op.path and key != ("DELETE", "/1.0/instances/{ref}"):
                    params = {"ref": TARGET, **({"snap": SNAP} if "{snap}" in op.path else {})}
                    if key == ("DELETE", "/1.0/instances/{ref}/snapshots/{snap}"):
                        params = {"ref": TARGET}  # the snapshot the others need stays
                    fuzz.run(op, mode, path_parameters=params)
            assert d.proc is not None and d.proc.poll() is None, f"ctd died fuzzing {op.label}"
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {fuzz.requests} requests over {len(operations) - len(WEBSOCKET)} operations in {elapsed:.0f} s "
          f"(schemathesis {schemathesis.__version__ if hasattr(schemathesis, '__version__') else '?'}): "
          f"{dict(sorted(fuzz.statuses.items()))}")
    assert not fuzz.failures, "server errors:\n" + "\n".join(fuzz.failures)

    # The daemon answers, and what exists now was made by an accepted request.
    assert d.client.get("/1.0")["api"] == "1.0"
    for op in d.client.get("/1.0/operations")["operations"]:
        if op["status"] == "running":
            d.client.get(f"/1.0/operations/{op['id']}/wait", timeout=120)
    after = inventory(d)
    for kind, names in after.items():
        extra = names - before[kind] - fuzz.accepted[kind]
        assert not extra, f"{kind} {sorted(extra)} exist though no request that made them was accepted"
    for name in after["instances"] - {TARGET}:
        d.client.run("DELETE", f"/1.0/instances/{name}", query={"force": "true"})
    for name in after["networks"] - before["networks"]:
        d.client.request("DELETE", f"/1.0/networks/{name}")
    d.client.run("DELETE", f"/1.0/instances/{TARGET}", query={"force": "true"})
    problems = settled_audit(d)
    assert not problems, "after fuzzing:\n" + "\n".join(problems)


def _get_status(d: Daemon, path: str, **query: str) -> int:
    try:
        d.client.get(path, **query)
    except ApiError as exc:
        return exc.status
    return 200


def _container_procs(d: Daemon, name: str) -> set[str]:
    procs: set[str] = set()
    for base in d.cgroup_dirs():
        f = base / f"ct-{name}" / "cgroup.procs"
        if f.exists():
            procs |= set(f.read_text().split())
    return procs


def test_exec_and_console_validate_before_the_upgrade(module_ctd: Daemon) -> None:
    d = module_ctd
    stopped, running = d.unique("ws"), d.unique("ws")
    for name in (stopped, running):
        d.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox"})
    d.client.run("PUT", f"/1.0/instances/{running}/state", {"action": "start"})
    try:
        exec_path = f"/1.0/instances/{running}/exec"
        for query, status in [({}, 400), ({"cmd": ""}, 400), ({"cmd": "true", "env": "NOEQUALS"}, 400),
                              ({"cmd": "true", "env": "=x"}, 400), ({"cmd": "true", "cwd": "relative"}, 400),
                              ({"cmd": "true", "width": "0"}, 400), ({"cmd": "true", "height": "99999"}, 400),
                              ({"cmd": "true", "width": "abc"}, 400), ({"cmd": "a\0b"}, 400)]:
            assert _get_status(d, exec_path, **query) == status, query
        for ref in ("nosuch", "Bad..Name", "a" * 200):
            assert _get_status(d, f"/1.0/instances/{ref}/exec", cmd="true") in (400, 404), ref
            assert _get_status(d, f"/1.0/instances/{ref}/console") in (400, 404), ref
        assert _get_status(d, f"/1.0/instances/{stopped}/exec", cmd="true") == 409
        assert _get_status(d, f"/1.0/instances/{stopped}/console") == 409
        # A valid request without the WebSocket handshake is refused and leaves no process behind.
        procs = _container_procs(d, running)
        for query in ({"cmd": ["sleep", "1000"]}, {"cmd": ["sleep", "1001"], "tty": "1"}):
            status = _get_status(d, exec_path, **query)
            assert 400 <= status < 500, (query, status)
        assert _get_status(d, f"/1.0/instances/{running}/console") in (400, 409)
        time.sleep(0.5)
        left = _container_procs(d, running) - procs
        assert not left, f"a refused exec left processes {left} in {running}"
        # ... and the real thing still works.
        assert d.sh(running, "echo ok").out.strip() == "ok"
    finally:
        for name in (stopped, running):
            d.client.run("DELETE", f"/1.0/instances/{name}", query={"force": "true"})


# ------------------------------------------------------------------ the CLI

def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    ctx = click.Context(group)
    # list_commands/get_command, not .commands: ctctl's root loads a noun's module on demand
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            out += _commands(cmd, prefix + (name,))
        else:
            out.append((prefix + (name,), cmd))
    return out


def malformed(path: tuple[str, ...], cmd: click.Command) -> list[list[str]]:
    """Argument lists that must all be refused for this verb."""
    cases = [[*path, "--no-such-option"]]
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    required = [p for p in args if p.required]
    if required:
        cases.append([*path])  # a missing argument
    if not any(a.nargs == -1 for a in args):
        cases.append([*path, *(["x1"] * len(args)), "extra-argument"])
    for opt in (p for p in cmd.params if isinstance(p, click.Option) and not p.is_flag):
        if opt.name in ("socket_path",):
            continue
        if isinstance(opt.type, (click.types.IntParamType, click.types.FloatParamType)):
            cases.append([*path, opt.opts[0], "not-a-number", *(["x1"] * len(required))])
        elif isinstance(opt.type, click.Choice):
            cases.append([*path, opt.opts[0], "no-such-choice", *(["x1"] * len(required))])
    for arg in required:
        if arg.name in ("instance", "source", "name"):
            # names that are not names, and an instance that does not exist
            cases.append([*path, *(["Bad/Name!" if a is arg else "x1" for a in required])])
            if arg.name in ("instance", "source"):
                cases.append([*path, *(["nosuch-instance" if a is arg else "x1" for a in required])])
    return cases


def test_every_cli_verb_refuses_malformed_arguments_in_one_line(module_ctd: Daemon) -> None:
    from ctctl.main import cli
    d = module_ctd
    names_before = {i["name"] for i in d.client.get("/1.0/instances")["instances"]}
    verbs = _commands(cli)
    assert len(verbs) >= 25, [v for v, _ in verbs]
    cases = [case for path, cmd in verbs for case in malformed(path, cmd)]

    def run(args: list[str]) -> tuple[list[str], int, str, str]:
        r = subprocess.run([sys.executable, "-m", "ctctl.main", "--socket", str(d.socket), *args],
                           capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
        return args, r.returncode, r.stdout, r.stderr

    bad = []
    with ThreadPoolExecutor(8) as pool:
        for args, code, out, err in pool.map(run, cases):
            lines = err.strip().splitlines()
            if code == 0 or len(lines) != 1 or not lines[0].startswith("ctctl: ") or "Traceback" in err:
                bad.append(f"ctctl {' '.join(args)} -> exit {code}, stderr {err.strip()!r}")
    print(f"\nctctl: {len(cases)} malformed invocations over {len(verbs)} verbs")
    assert not bad, f"{len(bad)} of {len(cases)} malformed invocations were not one-line errors:\n" + "\n".join(bad)
    assert {i["name"] for i in d.client.get("/1.0/instances")["instances"]} == names_before
