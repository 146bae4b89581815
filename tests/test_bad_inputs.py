"""The bad-input battery (tests/bad_inputs.py): every case through the real CLI in a subprocess must
be refused with one clear line (exit status 2, naming the key, file or line) or handled with its
logged warning; never a traceback, never exit 0 where a refusal is owed. Cases that load a model or
build an index are ``slow``."""

from __future__ import annotations

import pytest
from bad_inputs import CASES, error_lines, run_case


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bad_input_gets_one_clear_line(case, scratch):
    verdict, proc = run_case(case, scratch)
    out = proc.stdout + proc.stderr
    assert verdict in ("clear", "handled"), f"{verdict}: exit {proc.returncode}\n{error_lines(out)}\n{out[-2500:]}"
