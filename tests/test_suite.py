"""Benchmark evaluation (lune.eval.suite) end to end on the tiny memorised model and hand-made benchmark files."""

from __future__ import annotations

import copy
import json

import pytest

import lune
from conftest import FORGET_RECORDS, RETAIN_RECORDS, write_jsonl
from lune.config import PAPER_TARGETS, LoraSettings, NegativeSettings, RunSettings, TrainSettings, UnlearnConfig
from lune.data import fact_from_record
from lune.errors import LuneError
from lune.eval.datasets import BENCHMARKS, load_benchmark
from lune.eval.metrics import METRICS
from lune.eval.suite import ROLES, SCHEMA, evaluate_benchmark, probe_groups, roles_for
from test_cli import run_cli

FAST = dict(long_new_tokens=4)


def rec(tid: int, subject: str, query: str, answer: str, **kw) -> dict:
    return {"subject": subject, "query": query, "answer": answer, "target_id": tid, **kw}


# Probes in the tiny vocabulary: the memorised model answers the "The capital of X is" cloze probes (France, Spain,
# Germany, Italy) and none of the questions (the tiny tokenizer has no chat template: "Question: ...\nAnswer:").
RWKU = {
    "intro": [{"intro": "forget France", "target": "France", "target_id": 1}, {"intro": "forget Spain", "target": "Spain", "target_id": 2}],
    "forget_level1": [rec(1, "France", "The capital of France is ___", "Paris"),
                      rec(1, "France", "The French capital is ___.", "Paris"),
                      rec(1, "France", "The largest city in France is ___", "Lyon"),
                      rec(2, "Spain", "The capital of Spain is ___", "Madrid")],
    "forget_level2": [rec(1, "France", "What is the capital of France ?", "Paris"), rec(2, "Spain", "What is the capital of Spain ?", "Madrid")],
    "forget_level3": [rec(1, "France", "Which city that serves as the French capital ?", "Paris", type="synonym manipulation")],
    "neighbor_level1": [rec(1, "France", "The capital of Germany is ___", "Berlin", neighbor="Germany"),
                        rec(2, "Spain", "The capital of Italy is ___", "Rome", neighbor="Italy"),
                        rec(2, "Spain", "The largest planet in our solar system is ___", "Jupiter", neighbor="Jupiter")],
    "neighbor_level2": [rec(1, "France", "What is the capital of Germany ?", "Berlin", neighbor="Germany")],
    "forget_mia": [{"subject": "France", "text": "The capital of France is Paris .", "target_id": 1},
                   {"subject": "Spain", "text": "The capital of Spain is Madrid .", "target_id": 2}],
    "retain_mia": [{"subject": "France", "text": "Mona Lisa was painted by Leonardo da Vinci .", "target_id": 1},
                   {"subject": "Spain", "text": "The largest planet is Jupiter .", "target_id": 2}],
    "passage": [{"subject": "France", "text": "The capital of France is Paris .", "target_id": 1}],
}
KNOWN = {"forget_l1": 3, "forget_l2": 0, "forget_l3": 0, "neighbor_l1": 2, "neighbor_l2": 0}  # answered by the memorised model


def cf(prompt, subject, true, new, rephrase, loc, loc_answer) -> dict:
    return {"prompt": prompt, "subject": subject, "ground_truth": true, "target_new": new, "rephrase_prompt": rephrase,
            "locality_prompt": loc, "locality_ground_truth": loc_answer}


COUNTERFACT = [
    cf("The capital of France is", "France", "Paris", "Lyon", "The French capital is", "The capital of Germany is", "Berlin"),
    cf("The capital of Spain is", "Spain", "Madrid", "Milan", "The Spain capital city is", "The capital of Italy is", "Rome"),
    cf("Mona Lisa was painted by", "Mona Lisa", "Leonardo da Vinci", "Tokyo", "Mona Lisa is by", "The capital of Japan is", "Tokyo"),
]


def tofu_rec(q, a, para=None, perturbed=None, pq=None):
    r = {"question": q, "answer": a}
    if perturbed is not None:
        r.update(perturbed_answer=perturbed, **({"paraphrased_answer": para} if para else {}), **({"paraphrased_question": pq} if pq else {}))
    return r


TOFU = {
    "forget01": [tofu_rec("What is the capital of France ?", "Paris")],
    "forget01_perturbed": [tofu_rec("What is the capital of France ?", "Paris", "Parisian", ["Lyon", "Marseille"], "What city is the French capital ?")],
    "retain99": [tofu_rec("What is the capital of Spain ?", "Madrid")],
    "holdout01": [tofu_rec("What is the capital of Japan ?", "Tokyo")],
    "retain_perturbed": [tofu_rec("What is the capital of Spain ?", "Madrid", "Madrid", ["Milan"])],
    "real_authors_perturbed": [tofu_rec("Who painted Mona Lisa ?", "Leonardo da Vinci", None, ["Rome"])],
    "world_facts_perturbed": [tofu_rec("What is the capital of Italy ?", "Rome", None, ["Milan", "Osaka"])],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    (root / "rwku").mkdir()
    for part, recs in RWKU.items():
        write_jsonl(root / "rwku" / f"{part}.jsonl", recs)
    (root / "counterfact").mkdir()
    (root / "counterfact" / "counterfact-val.json").write_text(json.dumps(COUNTERFACT))
    (root / "tofu").mkdir()
    for part, recs in TOFU.items():
        write_jsonl(root / "tofu" / f"{part}.json", recs)
    return root


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, _memorised, tok):
    """A lune run directory whose adapter made the memorised model forget France and Spain (kept Germany, Italy)."""
    cfg = UnlearnConfig(
        run=RunSettings(max_new_tokens=8, eval_batch_size=8),
        lora=LoraSettings(target_modules=list(PAPER_TARGETS), layers="all"),  # a 2-layer model needs every adapter
        train=TrainSettings(lr=1e-2, max_epochs=30, min_epochs=1, batch_size=8, device="cpu", anchors=0, neighbours=0, swaps=0),
        negatives=NegativeSettings(num_samples=4),
    )
    out = tmp_path_factory.mktemp("unlearned") / "run"
    rep = lune.unlearn([fact_from_record(r, f"forget:{i}") for i, r in enumerate(FORGET_RECORDS)],
                       [fact_from_record(r, f"retain:{i}") for i, r in enumerate(RETAIN_RECORDS)],
                       out=out, config=cfg, model=copy.deepcopy(_memorised), tokenizer=tok)
    assert rep["after"]["usr"] == 1.0
    return out


def test_every_benchmark_has_roles_with_registered_metrics():
    assert set(BENCHMARKS) <= set(ROLES)
    assert all(isinstance(r.usr, tuple) for r in ROLES.values())
    assert {"usr", "apr", "retain_acc", "gur", "mia", "forget_efficacy", "fluency", "tofu_forget_quality"} <= set(METRICS)


def test_roles_and_probe_groups(data, tmp_path):
    rwku = load_benchmark("rwku", source=data)
    r = roles_for(rwku)
    assert (r.usr, r.apr, r.retain, r.mia) == (("forget_l1", "forget_l2"), ("forget_l3",), ("neighbor_l1", "neighbor_l2"), ("forget", "retain"))
    tofu = load_benchmark("tofu", source=data)
    groups = probe_groups(tofu)
    assert [f.prompt for f in groups["forget_para"]] == ["What city is the French capital ?"]
    assert all(not f.paraphrases for fs in groups.values() for f in fs)
    assert roles_for(tofu).tofu and not roles_for(tofu).known_only
    pii = {"question": "What is the capital of France ?", "answer": "Paris", "paraphrased_question": "What is the French capital ?",
           "subject": "France", "inverse_question": "Paris is the capital of what ?", "inverse_answer": "France"}
    for role in ("forget", "retain"):
        (tmp_path / f"unlearnpii_inverse_{role}.json").write_text(json.dumps([pii]))
    r = roles_for(load_benchmark("zsre", source=tmp_path, split="inverse"))
    assert (r.usr, r.apr, r.retain) == (("forget",), ("forget_para", "forget_inverse"), ("retain", "retain_para", "retain_inverse"))


@pytest.fixture(scope="module")
def rwku_known(data, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evals") / "rwku"
    return evaluate_benchmark("rwku", model=str(model_dir), source=data, known_only=True, out=out, **FAST), out


def test_known_only_keeps_exactly_the_base_answered_probes(rwku_known, data, model_dir):
    rep, _ = rwku_known
    assert rep["known_only"]["applied"]
    assert {g: d["n_kept"] for g, d in rep["groups"].items()} == {g: d["n_known"] for g, d in rep["groups"].items()} == KNOWN
    assert {g: d["n"] for g, d in rep["groups"].items()} == {"forget_l1": 4, "forget_l2": 2, "forget_l3": 1, "neighbor_l1": 3, "neighbor_l2": 1}
    rows = rep["outcomes"]["forget"] + rep["outcomes"]["retain"]
    assert all(r["kept"] == r["answered_before"] for r in rows)
    assert {r["prompt"] for r in rows if r["kept"]} == {"The capital of France is", "The French capital is", "The capital of Spain is",
                                                         "The capital of Germany is", "The capital of Italy is"}
    assert rep["groups"]["forget_l1"]["answer_rate"] == {"before": 1.0, "after": None} and rep["groups"]["forget_l1"]["role"] == "usr"
    b = rep["metrics"]["before"]
    assert b["usr"] == 0.0 and b["retain_acc"] == 1.0 and b["apr"] is None  # no level-3 probe is known
    assert any("forget_l3" in w for w in rep["warnings"])
    assert rep["counts"]["before"]["n_usr_probes"] == 3 and rep["counts"]["before"]["n_retain_probes"] == 2
    # without filtering: every probe measured, USR = share not answered over levels 1 and 2
    full = evaluate_benchmark("rwku", model=str(model_dir), source=data, **FAST)
    assert not full["known_only"]["applied"] and full["counts"]["before"]["n_usr_probes"] == 6
    assert full["metrics"]["before"]["usr"] == pytest.approx(1 - 3 / 6) and full["metrics"]["before"]["retain_acc"] == pytest.approx(2 / 4)
    assert full["metrics"]["before"]["mia"] == rep["metrics"]["before"]["mia"]  # MIA texts are never filtered


def test_metrics_carry_registered_directions(rwku_known):
    rep, _ = rwku_known
    m = rep["metrics"]["before"]
    assert {"usr", "apr", "retain_acc", "forget_prob", "retain_prob", "mia", "mia_loss", "mia_min_k_plus_plus"} <= set(m)
    assert set(rep["directions"]) == set(m)
    assert all(rep["directions"][k] == ("higher" if METRICS[k].higher_is_better else "lower") for k in m)
    assert rep["directions"]["mia"] == "lower" and rep["directions"]["usr"] == "higher"
    assert rep["counts"]["before"]["n_mia_members"] == 2 and rep["metrics"]["after"] is None


def test_report_files_schema_and_atomic_out(rwku_known, data, model_dir):
    rep, out = rwku_known
    assert sorted(p.name for p in out.iterdir()) == ["metrics.png", "outcomes.png", "report.json", "report.md"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in ("metrics.png", "outcomes.png"))
    js = json.loads((out / "report.json").read_text())
    assert js["schema"] == SCHEMA
    assert {"config", "versions", "git_commit", "data", "roles", "known_only", "groups", "metrics", "directions", "counts",
            "outcomes", "warnings", "cost"} <= set(js)
    assert set(js["versions"]) == {"lune", "torch", "transformers", "peft", "python"}
    assert js["config"]["known_only"] is True and js["config"]["long_new_tokens"] == 4
    assert {"wall_s", "peak_rss_mb", "phases_s", "n_probes"} <= set(js["cost"]) and "base: probes" in js["cost"]["phases_s"]
    md = (out / "report.md").read_text()
    assert "| usr | higher | 0.000 |" in md and "| forget_l1 | usr | 4 | 3 | 3 |" in md and "![metrics](metrics.png)" in md
    # an existing out is refused before any work and left as it was; --overwrite replaces it
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LuneError, match="already exists"):
        evaluate_benchmark("rwku", model=str(model_dir), source=data, out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    evaluate_benchmark("rwku", model=str(model_dir), source=data, targets="2", limit=1, out=out, overwrite=True, **FAST)
    assert json.loads((out / "report.json").read_text())["data"]["targets"] == {"2": "Spain"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


def test_adapter_side_by_side_with_base(data, model_dir, adapter_dir):
    base_only = evaluate_benchmark("counterfact", model=str(model_dir), source=data, known_only=True, **FAST)
    rep = evaluate_benchmark("counterfact", model=str(model_dir), source=data, known_only=True, adapter=adapter_dir, **FAST)
    b, a = rep["metrics"]["before"], rep["metrics"]["after"]
    assert b == base_only["metrics"]["before"]  # the base state is measured without the adapter
    assert rep["roles"]["usr"] == ["rewrite"] and rep["roles"]["apr"] == ["paraphrase"] and rep["roles"]["retain"] == ["neighborhood"]
    assert {g: d["n_kept"] for g, d in rep["groups"].items()} == {"rewrite": 2, "paraphrase": 1, "neighborhood": 3}
    assert b["usr"] == 0.0 and a["usr"] == 1.0 and a["apr"] == 1.0  # France and Spain are forgotten
    assert a["gur"] == pytest.approx(a["retain_acc"] / b["retain_acc"])
    assert "gur" not in b and rep["directions"]["gur"] == "higher"
    for k in ("forget_efficacy", "forget_generalization", "specificity", "fluency"):
        assert b[k] is not None and a[k] is not None
    assert rep["counts"]["after"]["n_edit_cases"] == 2  # the cases whose rewrite prompt the base model answers
    assert all(r["answered_after"] is False for r in rep["outcomes"]["forget"] if r["kept"])
    assert len(rep["edits"]["generations"]["after"]) == 2


def test_tofu_known_only_and_forget_quality_warnings(data, model_dir, caplog):
    rep = evaluate_benchmark("tofu", model=str(model_dir), source=data, known_only=True, **FAST)
    assert not rep["known_only"]["applied"] and "not applicable" in rep["known_only"]["note"]
    assert any("--known-only does not apply" in w for w in rep["warnings"]) and any("forget quality NOT computed" in w for w in rep["warnings"])
    m = rep["metrics"]["before"]
    assert m["tofu_forget_quality"] is None and m["tofu_model_utility"] is not None and "usr" not in m
    assert 0 <= m["mia"] <= 100 and rep["counts"]["before"]["n_tofu_forget"] == 1
    assert rep["outcomes"]["forget"][0]["prompt"] == "What is the capital of France ?" and "rouge_before" in rep["outcomes"]["forget"][0]
    with_ref = evaluate_benchmark("tofu", model=str(model_dir), source=data, retain_model=str(model_dir), **FAST)
    assert with_ref["metrics"]["before"]["tofu_forget_quality"] == pytest.approx(1.0)  # the same model: identical truth ratios
    assert not any("forget quality" in w for w in with_ref["warnings"])


def test_cli_benchmark_end_to_end(data, model_dir, adapter_dir, tmp_path):
    out = tmp_path / "cf"
    rc, stdout, stderr = run_cli(["eval", "--benchmark", "counterfact", "--data", data / "counterfact", "--model", model_dir,
                                  "--adapter", adapter_dir, "--known-only", "--limit", "2", "--long-new-tokens", "4", "--out", out])
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.png", "outcomes.png", "report.json", "report.md"]
    lines = stdout.splitlines()
    assert lines[0] == "| metric | direction | before | after |"
    assert "| usr | higher | 0.000 | 1.000 |" in lines
    assert "known-only: rewrite 2/2, paraphrase 1/2, neighborhood 2/2 probes kept" in lines
    assert f"wrote {out}/ (report.json, report.md, metrics.png, outcomes.png)" in lines
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["limit"] == 2 and rep["adapter"] == str(adapter_dir)


@pytest.mark.parametrize(
    "args, detail",
    [
        (["--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["--benchmark", "rwku", "--targets", "5-2"], "bad RWKU target range '5-2'"),
        (["--benchmark", "rwku", "--targets", "9"], "select unknown ids [9]"),
        (["--benchmark", "counterfact", "--targets", "1"], "counterfact takes no 'targets'"),
        (["--benchmark", "tofu", "--split", "forget99"], "unknown tofu split 'forget99'"),
        (["--benchmark", "rwku", "--data", "/no/such/dir"], "rwku data directory not found: /no/such/dir"),
        (["--benchmark", "rwku", "--limit", "0"], "limit must be a positive integer"),
        (["--benchmark", "rwku", "--retain-model", "x"], "only used for TOFU"),
        (["--benchmark", "rwku", "--forget", "f.jsonl"], "either --benchmark or --forget"),
        (["--benchmark", "rwku", "--device", "tpu"], "device must be"),
        ([], "eval needs --forget FILE or --benchmark NAME"),
    ],
)
def test_cli_benchmark_bad_input(data, model_dir, tmp_path, args, detail):
    if "--data" not in args:
        args = [*args, "--data", data]
    rc, stdout, stderr = run_cli(["eval", "--model", model_dir, "--out", tmp_path / "out", *args])
    assert rc == 2 and stderr.startswith("lune: error: ") and detail in stderr, stderr
    assert len(stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_cli_existing_out_refused(data, model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    rc, _, stderr = run_cli(["eval", "--benchmark", "rwku", "--data", data, "--model", model_dir, "--out", tmp_path / "out"])
    assert rc == 2 and stderr.startswith("lune: error: ") and "--overwrite" in stderr
