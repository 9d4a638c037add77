"""benchmarks/paper.py: the table and figure from a results file (the runs themselves are benchmarks, not tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import paper  # noqa: E402


def _row(usr, wall, mb, params, steps=10, train_s=20.0):
    return {"usr": usr, "apr": 0.5, "gur": 0.9, "wall_s": wall, "peak_rss_mb": mb, "trainable_params": params,
            "steps": steps, "train_s": train_s, "mfu": 0.4, "fluency": 5.5}


def _results():
    return {"config": {"description": "d", "methods": {"lune": [], "lune-full": [], "rome": [], "broken": []}},
            "selection": {"n": 3}, "n_forget": 3, "n_retain_probes": 7, "base": {"fluency": 5.6},
            "machine": {"cpus": 2, "torch_threads": 2},
            "rows": {"lune": _row(1.0, 100.0, 1000.0, 1000), "lune-full": _row(1.0, 200.0, 4000.0, 100000),
                     "rome": _row(0.8, 50.0, 1000.0, 10), "broken": {"error": "boom"}}}


def test_table_gives_every_cost_as_a_ratio_to_lune(tmp_path):
    paper.write_outputs("x", _results(), tmp_path)
    md = (tmp_path / "paper_x.md").read_text()
    full = next(line for line in md.splitlines() if line.startswith("| lune-full |"))
    cells = [c.strip() for c in full.strip("|").split("|")]
    # wall / lune, peak MB / lune, wall x MB / lune
    assert cells[9:12] == ["2.00", "4.00", "8.00"]
    assert "| broken | failed: boom |" in md
    assert (tmp_path / "paper_x.png").stat().st_size > 1000


def test_rows_from_another_machine_are_named_in_the_table(tmp_path):
    res = _results()
    for r in ("lune", "lune-full", "rome"):
        res["rows"][r]["peak_gflops"] = 200.0
    paper.write_outputs("x", res, tmp_path)  # one machine: no note
    assert "Not every row ran on the same machine" not in (tmp_path / "paper_x.md").read_text()
    del res["rows"]["lune"]["peak_gflops"]
    res["rows"]["lune"]["train_flops"] = 20.0 * 0.4 * 200e9  # implies a 200 GFLOP/s machine
    res["rows"]["lune-full"]["peak_gflops"] = 210.0  # within 15%: the same machine
    res["rows"]["rome"]["peak_gflops"] = 400.0
    paper.write_outputs("x", res, tmp_path)
    note = next(line for line in (tmp_path / "paper_x.md").read_text().splitlines() if "Not every row ran" in line)
    assert "200 GFLOP/s: lune, lune-full" in note and "400 GFLOP/s: rome" in note


def test_every_config_names_a_prepared_benchmark_and_registered_methods():
    from lune.methods import METHODS

    configs = sorted((BENCH / "configs").glob("*.json"))
    assert configs
    for path in configs:
        exp = json.loads(path.read_text())
        assert exp["benchmark"] in paper.PREPARE, path
        for name, flags in exp["methods"].items():
            assert flags[0] == "--method" and flags[1] in METHODS, (path, name)


def test_unknown_experiment_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        paper.main(["nope", "--out", str(tmp_path)])


def test_remeasure_updates_only_the_named_metrics_of_finished_rows(tmp_path, monkeypatch):
    import argparse

    import lune

    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    (out / "paper_x.json").write_text(json.dumps(_results()))
    for row, wall in (("lune", 100.0), ("rome", 50.0), ("broken", 1.0)):  # lune-full has no run directory left
        (work / "x" / row).mkdir(parents=True)
        (work / "x" / row / "report.json").write_text(json.dumps({"cost": {"wall_s": wall}}))
    (work / "x" / "lune-full").mkdir()  # a run directory of another run than the table's row
    (work / "x" / "lune-full" / "report.json").write_text(json.dumps({"cost": {"wall_s": 123.0}}))
    asked = []

    class Tuned:
        def unload(self):
            pass

    monkeypatch.setattr(lune, "load_model", lambda *a, **k: ("model", "tok"))
    monkeypatch.setitem(paper.PREPARE, "fake", lambda exp, data, model, tok: {})
    monkeypatch.setattr(paper, "load_result", lambda base, run: (Tuned(), True))
    monkeypatch.setattr(paper, "extra_metrics", lambda model, tok, prep, exp, only: asked.append(only) or {"fluency": 1.0 + len(asked)})
    args = argparse.Namespace(out=str(out), work=str(work), data=str(tmp_path), methods=None, remeasure=["fluency"])
    res = paper.remeasure("x", {"benchmark": "fake"}, args)
    assert asked == [("fluency",)] * 3  # base, lune, rome
    assert res["base"]["fluency"] == 2.0 and res["rows"]["lune"]["fluency"] == 3.0 and res["rows"]["rome"]["fluency"] == 4.0
    assert res["rows"]["lune-full"]["fluency"] == 5.5 and "remeasured" not in res["rows"]["lune-full"]  # skipped: not its run
    assert res["rows"]["lune"]["wall_s"] == 100.0 and res["rows"]["lune"]["remeasured"] == ["fluency"]  # costs stay
    assert json.loads((out / "paper_x.json").read_text()) == res
