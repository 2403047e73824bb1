"""The benchmarks' stand-in pages reconnect on the pay page's rules: bench/page_rules.py
against static/js/pay.js, without a browser. The constants are read out of
pay.js; its retryDelay and connectionLost are cut out of it and run under Node
(which .ci/setup installs for npm) next to their Python counterparts."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess

import pytest

from bench import page_rules
from tests.support.processes import ROOT

PAY_JS = (ROOT / "static" / "js" / "pay.js").read_text()
CONSTANT = re.compile(r"^\s*const ([A-Z][A-Z0-9_]*) = (\d+);", re.MULTILINE)
RULE_CONSTANTS = {name: int(value) for name, value in CONSTANT.findall(PAY_JS)}


class Draws(random.Random):
    """Hands out the given numbers in turn, as the page's Math.random() is made to under Node."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__()
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def js_function(name: str) -> str:
    """The source of pay.js's ``function name(...) { ... }`` (two-space indented, as the file is)."""
    found = re.search(rf"^  function {name}\(.*?^  \}}$", PAY_JS, re.MULTILINE | re.DOTALL)
    assert found, f"no function {name} in pay.js"
    return found.group(0)


def run_node(script: str) -> object:
    """Runs ``script`` under Node, in strict mode with pay.js's constants in scope, and returns
    what it printed as JSON."""
    node = shutil.which("node")
    assert node, "Node is not installed: run .ci/setup"
    constants = "".join(f"const {name} = {value};\n" for name, value in RULE_CONSTANTS.items())
    done = subprocess.run([node, "-e", f'"use strict";\n(() => {{\n{constants}{script}\n}})();'],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_constants_are_pay_js_s() -> None:
    # Every numeric constant of pay.js is a reconnect rule; a new one belongs in page_rules too.
    assert {"POLL_MS", "POLL_AFTER_FAILURES", "FIRST_RETRY_MS", "MAX_RETRY_MS", "RESTART_SPREAD_MS",
            "CLOSE_GOING_AWAY", "CLOSE_LOGIN", "CLOSE_NOT_FOUND"} <= RULE_CONSTANTS.keys()
    in_python = {name: getattr(page_rules, name, None) for name in RULE_CONSTANTS}
    assert in_python == RULE_CONSTANTS
    assert RULE_CONSTANTS["POLL_MS"] == page_rules.POLL_SECONDS * 1000


CLOSES: list[int | None] = [None, 1000, 1001, 1006, 1011, 1013, 4001, 4401, 4429]


def test_retry_delay_is_pay_js_s_retry_delay() -> None:
    cases = [(failures, code, draw) for failures in range(1, 8) for code in CLOSES
             for draw in (0.0, 0.25, 0.5, 0.9999999)]
    cases += [(failures, 1001, draw) for failures in (0, 1, 2) for draw in (0.0, 0.3, 0.9999999)]
    in_js = run_node(js_function("retryDelay") + f"""
        const cases = {json.dumps(cases)};
        const out = cases.map(([failures, code, draw]) => {{
          Math.random = () => draw;
          return retryDelay(failures, code);
        }});
        console.log(JSON.stringify(out));
    """)
    assert isinstance(in_js, list) and len(in_js) == len(cases)
    for (failures, code, draw), ms in zip(cases, in_js, strict=True):
        seconds = page_rules.retry_delay(failures, code, Draws([draw]))
        assert math.isclose(seconds * 1000, ms, rel_tol=1e-12, abs_tol=1e-9), (failures, code, draw, ms, seconds)


def test_retry_delay_spreads_over_the_whole_window() -> None:
    rng = random.Random(7)
    restart = [page_rules.retry_delay(0, page_rules.CLOSE_GOING_AWAY, rng) for _ in range(2000)]
    assert 0 <= min(restart) < 0.1 * page_rules.RESTART_SPREAD_MS / 1000
    assert 0.9 * page_rules.RESTART_SPREAD_MS / 1000 < max(restart) < page_rules.RESTART_SPREAD_MS / 1000
    third = [page_rules.retry_delay(3, 1006, rng) for _ in range(2000)]
    assert 0 <= min(third) < 0.4 and 3.6 < max(third) < 4.0
    capped = [page_rules.retry_delay(30, None, rng) for _ in range(2000)]
    assert max(capped) < page_rules.MAX_RETRY_MS / 1000
    with pytest.raises(ValueError):
        page_rules.retry_delay(0, 1006, rng)


LOSSES: list[list[int | None]] = [
    [1001, 1001, 1001],  # planned stops only: never polling
    [1001, 1006, 1006],  # a stop, then two refused attempts
    [1006, 1001, 1006],
    [None, 4429, 4401, 1011],
    [1013, 1001, 1001],
]


def test_failures_are_counted_as_pay_js_counts_them() -> None:
    # connectionLost with the state machine around it stubbed: the phase it
    # enters and the failures it counts, loss after loss, without a connection in between going live.
    in_js = run_node("""
        let attempt = null, failures = 0, phase = null, retryTimer = 0;
        const enter = (p) => { phase = p; };
        const startPolling = () => {};
        const retryDelay = () => 0;
        const connect = () => {};
        const setTimeout = () => 0;
    """ + js_function("connectionLost") + f"""
        const runs = {json.dumps(LOSSES)};
        console.log(JSON.stringify(runs.map((losses) => {{
          failures = 0;
          return losses.map((code) => {{ connectionLost(code); return [phase, failures]; }});
        }})));
    """)
    in_python = []
    for losses in LOSSES:
        failures, seen = 0, []
        for code in losses:
            failures += page_rules.counts_as_failure(code)
            seen.append(["polling" if failures >= page_rules.POLL_AFTER_FAILURES else "retrying", failures])
        in_python.append(seen)
    assert in_js == in_python
    assert in_python[0] == [["retrying", 0]] * 3


def test_only_not_your_order_is_given_up() -> None:
    assert not page_rules.retries(page_rules.CLOSE_NOT_FOUND)
    assert all(page_rules.retries(code) for code in CLOSES)
