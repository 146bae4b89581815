"""bin/bench_retrieval.py --quick end to end: every section runs and reports positive figures.

The smoke run builds its tiny worlds, vectors and indexes in a fresh cache (the embedded MiniLM
encodes ~500 passages), so it checks the whole script, not only the cached path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bin" / "bench_retrieval.py"


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out),
                           "--cache", str(cache)], capture_output=True, text=True, timeout=180,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())

    a = res["a"]
    for key in ("ours_pps", "bare_same_batches_pps", "bare_input_order_pps", "ratio_ours_bare"):
        assert _positive(a[key]), (key, a[key])
    assert a["max_abs_diff"] < 1e-4  # ours and the bare forward give the same vectors

    kinds = res["b"]["kinds"]
    assert [k["kind"] for k in kinds] == ["Flat", "IVF64,SQ8"]
    for k in kinds:
        for key in ("bare_qps", "ours_qps", "bare_enc_qps", "ours_enc_qps", "ratio", "ratio_enc"):
            assert _positive(k[key]), (k["kind"], key, k[key])

    c = res["c"]
    assert _positive(c["flat"]["qps"]) and _positive(c["flat"]["bytes"])
    assert {r["family"] for r in c["configs"]} == {"IVF-SQ8", "IVF-PQ", "OPQ-IVF-PQ", "HNSW"}
    for r in c["configs"]:
        for key in ("speedup", "qps", "memory_ratio", "build_s"):
            assert _positive(r[key]), (r["factory"], key, r[key])
    assert max(r["recall_at_10"] for r in c["configs"]) > 0.5  # the sweep found neighbours

    d = res["d"]
    assert d["requests"] == 16 * 2  # 16 clients x 2 requests each, none failed
    for key in ("service_qps", "inproc_batched_qps", "inproc_per_request_qps",
                "ratio_vs_batched"):
        assert _positive(d[key]), (key, d[key])
    assert {t[0][:3] for t in res["targets"]} == {"(a)", "(b)", "(c)", "(d)"}
