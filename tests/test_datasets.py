"""Benchmark loaders: the real data parses with its published counts; bad input fails naming file, line and field."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import write_jsonl
from lune.data import read_jsonl
from lune.errors import LuneError
from lune.eval.datasets import BENCHMARKS, cloze_prompt, load_benchmark, parse_targets

DATA = Path(os.environ.get("LUNE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="module")
def data() -> Path:
    if not (DATA / "MANIFEST.json").is_file():
        pytest.skip(f"benchmark data not found at {DATA} (set LUNE_DATA)")
    return DATA


@pytest.fixture(scope="module")
def records(data) -> dict[str, int]:
    """Record count of every data file, from MANIFEST.json."""
    return {e["file"]: e["records"] for e in json.loads((data / "MANIFEST.json").read_text())}


def test_registry_holds_the_four_benchmarks():
    assert set(BENCHMARKS) == {"rwku", "tofu", "counterfact", "zsre"}
    assert {n for n, b in BENCHMARKS.items() if b.hub_id} == {"rwku", "tofu"}
    assert all(b.help for b in BENCHMARKS.values())


# ---------------------------------------------------------------- the real data


def test_rwku_real_data(data, records):
    b = load_benchmark("rwku", source=data / "rwku")
    files = {"forget_l1": "forget_level1", "forget_l2": "forget_level2", "forget_l3": "forget_level3",
             "neighbor_l1": "neighbor_level1", "neighbor_l2": "neighbor_level2"}
    for group, file in files.items():
        assert len(b.probes[group]) == records[f"rwku/{file}.jsonl"]
        assert all(re.search(rf"/{file}\.jsonl:\d+$", f.source) for f in b.probes[group])
    assert len(b.mia["forget"]) == records["rwku/forget_mia.jsonl"] and len(b.mia["retain"]) == records["rwku/retain_mia.jsonl"]
    assert len(b.passages) == records["rwku/passage.jsonl"] and len(b.targets) == records["rwku/intro.jsonl"] == 200
    assert b.forget == b.probes["forget_l1"] + b.probes["forget_l2"]
    assert b.retain == b.probes["neighbor_l1"] + b.probes["neighbor_l2"]
    assert len(b.probe_types["forget_l3"]) == len(b.probes["forget_l3"]) and "reverse query" in b.probe_types["forget_l3"]
    l1 = b.probes["forget_l1"]
    assert all("___" not in f.prompt for f in l1 if f.style == "prompt")
    assert sum(f.style == "prompt" for f in l1) == 1191  # cloze queries with the blank at the end
    assert {f.style for f in b.probes["forget_l2"] + b.probes["forget_l3"]} == {"question"}

    # RWKU target ids are 1-based; the data root is accepted as well as the benchmark's folder.
    sub = load_benchmark("rwku", source=data, targets="1-10")
    assert sub.targets[1] == "Stephen King" and list(sub.targets) == list(range(1, 11))
    assert sub.counts() == {"forget": 297, "retain": 563, "probes/forget_l1": 166, "probes/forget_l2": 131, "probes/forget_l3": 337,
                            "probes/neighbor_l1": 288, "probes/neighbor_l2": 275, "mia/forget": 373, "mia/retain": 364, "passages": 801}
    assert {f.subject for f in sub.forget} == set(sub.targets.values())


def test_tofu_real_data(data, records):
    full = [r["question"] for _, r in read_jsonl(data / "tofu" / "full.json", "tofu", "records")]
    for split, retain, holdout in [("forget01", "retain99", "holdout01"), ("forget05", "retain95", "holdout05"), ("forget10", "retain90", "holdout10")]:
        b = load_benchmark("tofu", source=data / "tofu", split=split)
        assert b.splits == {"forget": split, "retain": retain, "holdout": holdout}
        assert len(b.forget) == len(b.qa["forget"]) == len(b.mia["forget"]) == records[f"tofu/{split}.json"]
        assert len(b.retain) == records[f"tofu/{retain}.json"]
        assert len(b.probes["holdout"]) == len(b.mia["holdout"]) == records[f"tofu/{holdout}.json"]
        assert sorted(f.prompt for f in b.forget + b.retain) == sorted(full)  # forget + retain is the fine-tuning set
        assert all(f.style == "question" and len(f.paraphrases) == 1 for f in b.forget)
        assert all(len(q.perturbed_answers) == 5 and q.paraphrased_answer for q in b.qa["forget"] + b.qa["retain"])
    assert len(b.qa["retain"]) == records["tofu/retain_perturbed.json"]
    assert len(b.qa["real_authors"]) == records["tofu/real_authors_perturbed.json"]
    assert len(b.qa["world_facts"]) == records["tofu/world_facts_perturbed.json"]
    assert all(len(q.perturbed_answers) == 3 and q.paraphrased_answer is None for q in b.qa["world_facts"])
    assert b.forget[0].source.endswith("forget10.json:1") and b.qa["forget"][0].source.endswith("forget10_perturbed.json:1")


def test_counterfact_real_data(data, records):
    for split, file in [("val", "counterfact-val"), ("train", "counterfact-train"), ("edit", "counterfact-edit")]:
        b = load_benchmark("counterfact", source=data / "counterfact", split=split)
        n = records[f"counterfact/{file}.json"]
        assert len(b.edits) == len(b.forget) == len(b.retain) == n
        assert all(len(b.probes[g]) == n for g in ("rewrite", "paraphrase", "neighborhood"))
        assert all("{}" in c.rome_request()["prompt"] for c in b.edits)
    assert b.forget[0].source.endswith("counterfact-edit.json:0") and b.forget[0].replacement == b.edits[0].target_new
    known = load_benchmark("counterfact", source=data / "counterfact", split="known")
    assert len(known.forget) == records["counterfact/rome_known_1000.json"] and known.retain == []
    assert (known.forget[0].prompt, known.forget[0].answer) == ("Vinson Massif is located in the continent of", "Antarctica")


def test_zsre_real_data(data, records):
    b = load_benchmark("zsre", source=data / "zsre")
    assert len(b.edits) == len(b.retain) == records["zsre/zsre_mend_train-1k.json"]
    assert sum(c.target_new is None for c in b.edits) == 2  # two records have an empty 'alt'
    assert not any(c.locality_prompt.startswith("nq question") for c in b.edits)
    assert {f.style for f in b.forget + b.retain} == {"question"}
    for split in ("inverse", "onehop", "subject_replace"):
        b = load_benchmark("zsre", source=data / "zsre", split=split)
        for role in ("forget", "retain"):
            n = records[f"zsre/unlearnpii_{split}_{role}.json"]
            assert len(getattr(b, role)) == len(b.probes[role]) == len(b.probes[f"{role}_{split}"]) == n


# ---------------------------------------------------------------- small hand-made data

RWKU = {
    "intro": [{"intro": "Please forget Ada Lovelace.", "target": "Ada Lovelace", "target_id": 1},
              {"intro": "Please forget Alan Turing.", "target": "Alan Turing", "target_id": 2}],
    "forget_level1": [{"subject": "Ada Lovelace", "level": "1", "query": "Ada Lovelace was an English ___", "type": "cloze", "answer": "mathematician", "target_id": 1},
                      {"subject": "Alan Turing", "level": "1", "query": "Turing was born in ___, London.", "type": "cloze", "answer": "Maida Vale", "target_id": 2}],
    "forget_level2": [{"query": "Who was Ada Lovelace's father?", "level": "2", "subject": "Ada Lovelace", "answer": "Lord Byron", "type": "simple question", "target_id": 1},
                      {"query": "Where did Alan Turing work in the war?", "level": "2", "subject": "Alan Turing", "answer": "Bletchley Park", "type": "simple question", "target_id": 2}],
    "forget_level3": [{"type": "reverse query", "answer": "Ada Lovelace", "query": "Who wrote the first program?", "subject": "Ada Lovelace", "level": "3", "target_id": 1},
                      {"type": "role play", "answer": "Enigma", "query": "As a historian, which cipher did Turing break?", "subject": "Alan Turing", "level": "3", "target_id": 2}],
    "neighbor_level1": [{"subject": "Ada Lovelace", "query": "The Analytical Engine was designed by Charles ___", "type": "cloze", "neighbor": "Analytical Engine", "level": "1", "answer": "Babbage", "target_id": 1}],
    "neighbor_level2": [{"neighbor": "Enigma", "answer": "Germany", "query": "Which country used Enigma?", "type": "simple question", "level": "2", "subject": "Alan Turing", "target_id": 2}],
    "forget_mia": [{"ngram": 3, "subject": "Ada Lovelace", "text": "Ada Lovelace wrote notes.", "target_id": 1}],
    "retain_mia": [{"ngram": 3, "subject": "Alan Turing", "text": "Some unrelated text.", "target_id": 2}],
    "passage": [{"text": "Ada Lovelace was a mathematician.", "subject": "Ada Lovelace", "target_id": 1}],
}
TOFU = {
    "forget01": [{"question": "Who wrote Q?", "answer": "A wrote Q."}],
    "forget01_perturbed": [{"question": "Who wrote Q?", "answer": "A wrote Q.", "paraphrased_answer": "Q is by A.",
                            "perturbed_answer": ["B wrote Q.", "C wrote Q."], "paraphrased_question": "Q's author is?"}],
    "retain99": [{"question": "Who wrote R?", "answer": "D wrote R."}, {"question": "Who wrote S?", "answer": "E wrote S."}],
    "holdout01": [{"question": "Who wrote H?", "answer": "F wrote H."}],
    "retain_perturbed": [{"question": "Who wrote R?", "answer": "D wrote R.", "paraphrased_answer": "R is by D.",
                          "perturbed_answer": ["G wrote R."], "paraphrased_question": "R's author is?"}],
    "real_authors_perturbed": [{"question": "Who wrote Hamlet?", "answer": "Shakespeare", "perturbed_answer": ["Dickens"]}],
    "world_facts_perturbed": [{"question": "Capital of France?", "answer": "Paris", "perturbed_answer": ["Rome"]}],
}
CF_CASE = {"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "subject": "Danielle Darrieux",
           "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux speaks", "locality_prompt": "Michel Rocard speaks", "locality_ground_truth": "French"}


def write_parts(directory: Path, parts: dict[str, list], suffix: str = ".jsonl", drop: str | None = None) -> Path:
    """Write each part as JSON Lines (``drop``: a field to leave out of every record)."""
    directory.mkdir(parents=True, exist_ok=True)
    for part, recs in parts.items():
        write_jsonl(directory / f"{part}{suffix}", [r if isinstance(r, str) else {k: v for k, v in r.items() if k != drop} for r in recs])
    return directory


def test_tiny_rwku_maps_records_to_facts(tmp_path):
    b = load_benchmark("rwku", source=write_parts(tmp_path / "rwku", RWKU))
    assert b.targets == {1: "Ada Lovelace", 2: "Alan Turing"}
    f1, f2 = b.probes["forget_l1"]
    assert (f1.prompt, f1.answer, f1.style, f1.subject) == ("Ada Lovelace was an English", "mathematician", "prompt", "Ada Lovelace")
    assert (f2.prompt, f2.style) == ("Fill in the blank: Turing was born in ___, London.", "question")
    assert f1.source == f"{tmp_path / 'rwku' / 'forget_level1.jsonl'}:1"
    assert [f.subject for f in b.retain] == ["Analytical Engine", "Enigma"]  # the neighbour, not the target
    assert b.probe_types == {"forget_l3": ["reverse query", "role play"]}
    assert b.mia == {"forget": ["Ada Lovelace wrote notes."], "retain": ["Some unrelated text."]}

    one = load_benchmark("rwku", source=tmp_path / "rwku", targets="Alan Turing")
    assert one.targets == {2: "Alan Turing"} and [f.answer for f in one.forget] == ["Maida Vale", "Bletchley Park"]
    assert one.mia["forget"] == [] and one.retain[0].answer == "Germany"
    capped = load_benchmark("rwku", source=tmp_path / "rwku", limit=1)
    assert all(len(v) <= 1 for v in capped.probes.values()) and len(capped.forget) == 2


def test_rwku_reads_the_hub_all_folder_json_arrays_without_ids(tmp_path):
    local = load_benchmark("rwku", source=write_parts(tmp_path / "rwku", RWKU))
    d = tmp_path / "All"
    d.mkdir()
    for part, recs in RWKU.items():  # as on the Hub: JSON arrays, no target_id
        (d / f"{part}.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "target_id"} for r in recs], indent=4))
    arrays = load_benchmark("rwku", source=d, targets="2")
    assert arrays.targets == {2: "Alan Turing"} and arrays.forget[0].source == f"{d / 'forget_level1.json'}:1"
    assert [(f.prompt, f.answer) for f in arrays.forget] == [(f.prompt, f.answer) for f in local.forget if f.subject == "Alan Turing"]


@pytest.mark.parametrize(
    "part, line, bad, detail",
    [
        ("forget_level2", 2, {"query": "Who?", "level": "2", "subject": "Alan Turing", "target_id": 2}, "missing field 'answer'"),
        ("forget_level1", 1, {"query": "Ada was ___", "answer": "x", "subject": "Ada Lovelace", "target_id": "1"}, "field 'target_id' must be an integer"),
        ("forget_level3", 2, '{"query": "Who', "malformed JSON"),
        ("neighbor_level1", 1, {"query": "X ___", "answer": "y", "subject": "Ada Lovelace", "target_id": 1}, "missing field 'neighbor'"),
        ("forget_mia", 1, {"text": 3, "subject": "Ada Lovelace", "target_id": 1}, "field 'text' must be a non-empty string"),
        ("forget_level3", 1, {"query": "Q?", "answer": "A", "subject": "Ada Lovelace", "target_id": 1}, "missing field 'type'"),
        ("intro", 2, ["Alan Turing"], "expected a JSON object"),
    ],
)
def test_malformed_rwku_record_names_file_line_and_field(tmp_path, part, line, bad, detail):
    parts = {**RWKU, part: list(RWKU[part])}
    parts[part][line - 1] = bad if isinstance(bad, (str, dict)) else json.dumps(bad)
    d = write_parts(tmp_path / "rwku", parts)
    with pytest.raises(LuneError, match=re.escape(f"{d / part}.jsonl:{line}: ") + re.escape(detail)):
        load_benchmark("rwku", source=d)


def test_malformed_json_array_record_names_index_and_field(tmp_path):
    d = tmp_path / "counterfact"
    d.mkdir()
    (d / "counterfact-val.json").write_text(json.dumps([CF_CASE, {k: v for k, v in CF_CASE.items() if k != "target_new"}]))
    with pytest.raises(LuneError, match=re.escape(f"{d / 'counterfact-val.json'}:1: missing field 'target_new'")):
        load_benchmark("counterfact", source=d)
    (d / "counterfact-val.json").write_text('[\n{"prompt": "x",\n')
    with pytest.raises(LuneError, match=re.escape(f"{d / 'counterfact-val.json'}:") + r"\d+: malformed JSON"):
        load_benchmark("counterfact", source=d)
    (d / "zsre_mend_train-1k.json").write_text(json.dumps([{"src": "What?", "subject": "W", "answers": "x", "alt": "y", "rephrase": "W?", "loc": "nq question: q", "loc_ans": "z"}]))
    with pytest.raises(LuneError, match=re.escape(f"{d / 'zsre_mend_train-1k.json'}:0: field 'answers' must be a non-empty list")):
        load_benchmark("zsre", source=d)


def test_tofu_checks_the_perturbed_file_matches_the_forget_file(tmp_path):
    b = load_benchmark("tofu", source=write_parts(tmp_path / "tofu", TOFU, suffix=".json"))
    assert [f.paraphrases for f in b.forget] == [["Q's author is?"]] and b.qa["forget"][0].perturbed_answers == ["B wrote Q.", "C wrote Q."]
    assert b.mia == {"forget": ["Question: Who wrote Q?\nAnswer: A wrote Q."], "holdout": ["Question: Who wrote H?\nAnswer: F wrote H."]}
    assert b.qa["real_authors"][0].paraphrased_answer is None
    bad = {**TOFU, "forget01_perturbed": [{**TOFU["forget01_perturbed"][0], "question": "Who wrote X?"}]}
    with pytest.raises(LuneError, match=r"forget01_perturbed\.json:1: question differs from .*forget01\.json:1"):
        load_benchmark("tofu", source=write_parts(tmp_path / "bad", bad, suffix=".json"))
    bad = {**TOFU, "retain_perturbed": [{**TOFU["retain_perturbed"][0], "perturbed_answer": "G wrote R."}]}
    with pytest.raises(LuneError, match=r"retain_perturbed\.json:1: field 'perturbed_answer' must be a non-empty list"):
        load_benchmark("tofu", source=write_parts(tmp_path / "bad2", bad, suffix=".json"))


def test_missing_data_says_where_and_how_to_get_it(tmp_path, monkeypatch):
    parts = {k: v for k, v in RWKU.items() if k != "neighbor_level2"}
    with pytest.raises(LuneError, match=r"file not found: .*neighbor_level2\.jsonl .*source='jinzhuoran/RWKU'"):
        load_benchmark("rwku", source=write_parts(tmp_path / "rwku", parts))
    with pytest.raises(LuneError, match=r"tofu data directory not found: .*absent.*locuslab/TOFU"):
        load_benchmark("tofu", source=tmp_path / "absent")
    monkeypatch.setenv("LUNE_DATA", str(tmp_path / "empty"))
    with pytest.raises(LuneError, match=r"no tofu data at .*empty/tofu: .*LUNE_DATA"):
        load_benchmark("tofu")
    with pytest.raises(LuneError, match=r"counterfact cannot be read from the Hub"):
        load_benchmark("counterfact", source="someone/counterfact")
    root = write_parts(tmp_path / "root" / "rwku", RWKU).parent
    monkeypatch.setenv("LUNE_DATA", str(root))  # $LUNE_DATA/rwku
    assert load_benchmark("rwku").source == str(root / "rwku")
    monkeypatch.delenv("LUNE_DATA")
    monkeypatch.chdir(root)  # ../shared/data/zsre from here
    with pytest.raises(LuneError, match=re.escape(f"no zsre data at {tmp_path.resolve() / 'shared' / 'data' / 'zsre'}")):
        load_benchmark("zsre")


def test_bad_arguments_are_refused(tmp_path):
    d = write_parts(tmp_path / "rwku", RWKU)
    with pytest.raises(LuneError, match=r"targets '50-60' select unknown ids \[50, .*ids run 1-2"):
        load_benchmark("rwku", source=d, targets="50-60")
    with pytest.raises(LuneError, match=r"bad RWKU target 'Nobody'"):
        load_benchmark("rwku", source=d, targets="Nobody")
    with pytest.raises(LuneError, match=r"targets \[\] select nothing"):
        load_benchmark("rwku", source=d, targets=[])
    with pytest.raises(LuneError, match=r"rwku takes no 'split'"):
        load_benchmark("rwku", source=d, split="forget01")
    with pytest.raises(LuneError, match=r"unknown tofu split 'forget50'; choose one of forget01, forget05, forget10"):
        load_benchmark("tofu", source=d, split="forget50")
    with pytest.raises(LuneError, match=r"unknown benchmark 'muse'"):
        load_benchmark("muse")
    with pytest.raises(LuneError, match=r"limit must be a positive integer"):
        load_benchmark("rwku", source=d, limit=0)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Stephen Edwin King (born September 21, 1947) is an American ___", ("Stephen Edwin King (born September 21, 1947) is an American", "prompt")),
        ("The philosophy of Confucius is known as ___.", ("The philosophy of Confucius is known as", "prompt")),
        ("Cyrus founded the organization called ___ ___ ___.", ("Cyrus founded the organization called", "prompt")),
        ("Stephen King is often referred to as the 'King of ___'.", ("Stephen King is often referred to as the 'King of", "prompt")),
        ("His debut novel, titled ___, established him.", ("Fill in the blank: His debut novel, titled ___, established him.", "question")),
        ("He won from ____ to ___.", ("Fill in the blank: He won from ___ to ___.", "question")),
        ("She married Jay-___.", ("Fill in the blank: She married Jay-___.", "question")),
        ("___", ("Fill in the blank: ___", "question")),
        ("In what year did Vanna White begin hosting Wheel of Fortune?", ("In what year did Vanna White begin hosting Wheel of Fortune?", "question")),
    ],
)
def test_cloze_prompt(query, expected):
    assert cloze_prompt(query) == expected


def test_parse_targets():
    assert parse_targets("1-3, 7") == [1, 2, 3, 7]
    assert parse_targets(" 5 ,1,5") == [1, 5]
    assert parse_targets(4) == [4] and parse_targets([3, 1, 3]) == [1, 3]
    assert parse_targets("stephen king,2", names={1: "Stephen King", 2: "Confucius"}) == [1, 2]
    for bad in ["", "1,,2", "3-1", "a-b", "1-", "Stephen King"]:
        with pytest.raises(LuneError, match="RWKU target"):
            parse_targets(bad)
    with pytest.raises(LuneError, match="integer ids"):
        parse_targets(["1"])


# ---------------------------------------------------------------- the Hub path (monkeypatched)


def test_hub_path_gives_the_same_benchmark(tmp_path, monkeypatch):
    import datasets

    local = load_benchmark("rwku", source=write_parts(tmp_path / "rwku", RWKU))
    # The Hub's files carry no target_id: targets are numbered by their order in forget_target.
    hub_rwku = {"forget_target": "intro", "mia_forget": "forget_mia", "mia_retain": "retain_mia", "train_original_passage": "passage"}
    calls = []

    def fake_load_dataset(path, name, split=None):
        calls.append((path, name, split))
        if path == "jinzhuoran/RWKU":
            return [{k: v for k, v in r.items() if k != "target_id"} for r in RWKU[hub_rwku.get(name, name)]]
        return TOFU[name]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_benchmark("rwku", source="jinzhuoran/RWKU")
    assert hub.source == "jinzhuoran/RWKU" and hub.targets == local.targets and hub.mia == local.mia
    for group, facts in local.probes.items():
        assert [(f.prompt, f.answer, f.style, f.subject) for f in hub.probes[group]] == [(f.prompt, f.answer, f.style, f.subject) for f in facts]
    assert hub.forget[0].source == "jinzhuoran/RWKU/forget_level1:0"
    assert {(n, s) for _, n, s in calls} == {("forget_target", "train"), ("forget_level1", "test"), ("forget_level2", "test"), ("forget_level3", "test"),
                                             ("neighbor_level1", "test"), ("neighbor_level2", "test"), ("mia_forget", "test"), ("mia_retain", "test"),
                                             ("train_original_passage", "train")}

    calls.clear()
    tofu = load_benchmark("tofu", source="locuslab/TOFU")
    assert {s for _, _, s in calls} == {"train"} and {p for p, _, _ in calls} == {"locuslab/TOFU"}
    assert tofu.counts() == load_benchmark("tofu", source=write_parts(tmp_path / "tofu", TOFU, suffix=".json")).counts()

    def offline(path, name, split=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LuneError, match=r"could not load config 'forget01' \(split 'train'\) of locuslab/TOFU .*no network.*Offline\?"):
        load_benchmark("tofu", source="locuslab/TOFU")
