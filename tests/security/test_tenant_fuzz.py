"""schemathesis over HTTPS with a tenant token of project A, while project B holds instances.

Every operation of the served schema is fuzzed (valid and invalid data, random names and A's own
instance in the path) with A's tenant token. Each response is checked: no 5xx, and nothing in
it names B's instance, its snapshot or its description: a tenant must not learn that another
project's instances exist. Reuses the fuzzer of tests/robustness/test_api_fuzz.py.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Daemon
from tests.robustness.test_api_fuzz import WEBSOCKET, Fuzz
from tests.security.test_remote_access import https_daemon

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extra)")

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("CTD_TENANT_FUZZ_EXAMPLES", "15"))
A, B = "fuzza", "fuzzb"
MINE, VICTIM, SECRET = f"{A}-mine", f"{B}-victim", "B-secret-description"


class TenantFuzz(Fuzz):
    """Fuzz, plus: no response body names what belongs to project B."""

    def call(self, case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=self.base_url, session=self.session, timeout=60, verify=False)
        leaked = [word for word in (VICTIM, SECRET, "vsnap") if word in response.text]
        if leaked:
            raise AssertionError(f"{case.method} {case.formatted_path} body={case.body!r} -> "
                                 f"{response.status_code} names {leaked}: {response.text[:300]}")
        self.requests += 1
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            raise AssertionError(f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r} "
                                 f"-> {response.status_code} {response.text[:300]}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from https_daemon(tmp_path_factory.mktemp("tenantfuzz"), "tenantfuzz")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_tenant_fuzzing_the_https_api_gets_no_5xx_and_nothing_of_another_project(daemon: Daemon) -> None:
    d = daemon
    d.ok("project", "create", A)
    d.ok("project", "create", B)
    d.ok("create", VICTIM, "--template", "busybox", "--project", B, "--description", SECRET)
    d.ok("snapshot", VICTIM, "vsnap")
    d.ok("start", VICTIM)
    d.ok("create", MINE, "--template", "busybox", "--project", A)
    d.ok("snapshot", MINE, "s1")
    token = d.ok("token", "create", "fuzz-tenant", "--role", "tenant", "--project", A).strip()
    schema = schemathesis.openapi.from_dict(d.client.get("/1.0/openapi.json"))
    base = f"https://127.0.0.1:{d.port}"  # type: ignore[attr-defined]
    fuzz = TenantFuzz(d, base, EXAMPLES)
    fuzz.session.verify = False   # ctd's self-signed certificate; pinning is tested elsewhere
    fuzz.session.headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    operations = [r.ok() for r in schema.get_all_operations()]
    for op in operations:
        if op.path in WEBSOCKET:
            continue
        for mode in schemathesis.GenerationMode:
            fuzz.run(op, mode)
            if "{ref}" in op.path:
                params = {"ref": MINE, **({"snap": "s1"} if "{snap}" in op.path else {})}
                fuzz.run(op, mode, path_parameters=params)
        assert d.proc is not None and d.proc.poll() is None, f"ctd died fuzzing {op.label}"
    print(f"\ntenant fuzz: {fuzz.requests} requests over {len(operations)} operations in "
          f"{time.monotonic() - started:.0f} s: {dict(sorted(fuzz.statuses.items()))}")
    assert not fuzz.failures, "server errors or leaks:\n" + "\n".join(fuzz.failures)
    assert fuzz.statuses[200] > 0, "some requests were served, the token worked"
    assert d.instance(VICTIM)["description"] == SECRET, "B's instance unchanged"
