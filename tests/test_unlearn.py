"""lune.unlearn end to end on a tiny model that has memorised a few facts."""

from __future__ import annotations

import json

import pytest
import torch

import lune
import lune.api as api
from lune.anchors import context_sentences
from conftest import FORGET_RECORDS, RETAIN_RECORDS, base_state, write_jsonl
from lune.config import PAPER_TARGETS, LoraSettings, NegativeSettings, RunSettings, TrainSettings, UnlearnConfig
from lune.data import contains_answer, fact_from_record
from lune.errors import LuneError
from lune.methods import get_method
from lune.models import load_adapter
from lune.negatives import read_negatives

X = torch.tensor([[3, 4, 5, 6, 7, 8]])
COST_KEYS = {"wall_s", "train_s", "peak_rss_mb", "trainable_params", "total_params", "steps", "train_tokens", "negatives", "train_flops", "achieved_gflops", "peak_gflops", "mfu", "dtype"}
RUN_FILES = {"adapter", "negatives.jsonl", "config.json", "report.json", "report.md"}


def small_config(**run) -> UnlearnConfig:
    return UnlearnConfig(
        run=RunSettings(max_new_tokens=8, eval_batch_size=8, **run),
        # a 2-layer model needs every adapter, unprotected (protection and sites have their own tests)
        lora=LoraSettings(target_modules=list(PAPER_TARGETS), layers="all", protect=0.0),
        train=TrainSettings(lr=1e-2, max_epochs=30, min_epochs=1, batch_size=8, device="cpu", anchors=0, neighbours=0, swaps=0, sites=0),
        negatives=NegativeSettings(num_samples=4),
    )


def facts(records, name="forget.jsonl"):
    return [fact_from_record(r, f"{name}:{i + 1}") for i, r in enumerate(records)]


def logits(model):
    with torch.no_grad():
        return model(input_ids=X).logits


def test_unlearn_in_memory(memorised_model, tok):
    ref_logits, ref_state = logits(memorised_model), base_state(memorised_model)
    report = lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), config=small_config(), model=memorised_model, tokenizer=tok)

    b, a = report["before"], report["after"]
    assert b["usr"] == 0 and b["apr"] == 0 and b["retain_acc"] == 1.0
    assert a["usr"] == 1.0 and a["apr"] == 1.0 and a["usr_known"] == 1.0
    assert a["forget_prob"] < b["forget_prob"]
    assert (b["n_forget_prompts"], b["n_forget_paraphrases"], b["n_retain_probes"]) == (2, 1, 2)
    assert a["gur"] == pytest.approx(a["retain_acc"] / b["retain_acc"])
    assert report["unknown_facts"] == []
    assert report["method"] == "lune" and "out" not in report
    assert report["training"]["stopped_early"] and report["training"]["epochs"] < 30
    assert COST_KEYS <= set(report["cost"])
    c = report["cost"]
    assert c["negatives"] == 2 * 4 and c["steps"] >= 1 and c["train_tokens"] > 0
    assert 0 < c["trainable_params"] < c["total_params"]
    # where the time and the memory went: phases in order, peak RSS non-decreasing and reaching the run's peak
    assert list(c["phases_s"]) == ["load model", "before: probes", "retain targets", "negatives", "setup", "train", "after: probes"]
    assert sum(c["phases_s"].values()) <= c["wall_s"] + 0.01 and c["phases_s"]["train"] >= c["train_s"] > 0
    peaks = list(c["phases_peak_rss_mb"].values())
    assert all(b >= a * 0.99 for a, b in zip(peaks, peaks[1:])) and peaks[-1] <= c["peak_rss_mb"] * 1.01  # lazy high-water mark
    for row in report["facts"]:
        assert row["answered_before"] and not row["answered_after"]
        assert not contains_answer(row["after"], row["answer"])

    # the caller's model is handed back as it came: no LoRA layers, base weights bit-for-bit equal
    assert "peft_model" not in report and not hasattr(memorised_model, "peft_config")
    after = base_state(memorised_model)
    assert after.keys() == ref_state.keys()
    assert all(torch.equal(after[k], v) for k, v in ref_state.items()), "base weights changed"
    assert torch.equal(logits(memorised_model), ref_logits)


def test_unlearn_leaves_callers_model_unchanged(memorised_model, tok):
    """The model passed in is documented as 'an already loaded base model'; after unlearn it should still be that."""
    ref = logits(memorised_model)
    report = lune.unlearn(facts(FORGET_RECORDS), config=small_config(), model=memorised_model, tokenizer=tok)
    assert report["after"]["usr"] == 1.0
    unchanged = torch.equal(logits(memorised_model), ref)
    assert unchanged, "lune.unlearn modified the caller's base model in place (LoRA layers injected into it)"


def test_unlearn_twice_on_same_model_measures_the_base(memorised_model, tok):
    # e.g. a sweep over settings on one loaded model: every run must start from the original model
    cfg = small_config()
    first = lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert first["before"]["usr"] == 0 and first["after"]["usr"] == 1.0
    second = lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert second["before"]["usr"] == 0, f"second run's 'before' is the first run's unlearned model: {second['before']}"


def test_unlearn_with_negatives_file(memorised_model, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "build_negatives", lambda *a, **k: pytest.fail("negatives were built although a file was given"))
    negs = write_jsonl(tmp_path / "negatives.jsonl", [
        {"prompt": "The capital of France is", "negative": "Lyon ."},
        {"prompt": "The capital of France is", "negative": "Marseille ."},
        {"prompt": "The capital of Spain is", "negative": "Milan ."},
    ])
    report = lune.unlearn(facts(FORGET_RECORDS), config=small_config(), negatives=negs, model=memorised_model, tokenizer=tok)
    assert report["cost"]["negatives"] == 3
    assert report["before"]["usr"] == 0 and report["after"]["usr"] == 1.0


def test_unlearn_negatives_file_with_leak_fails_before_training(memorised_model, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "train", lambda *a, **k: pytest.fail("trained despite a bad negatives file"))
    negs = write_jsonl(tmp_path / "negatives.jsonl", [{"prompt": "The capital of France is", "negative": "paris!"}])
    with pytest.raises(LuneError, match=r"negatives\.jsonl:1: .*true answer"):
        lune.unlearn(facts(FORGET_RECORDS), config=small_config(), negatives=negs, model=memorised_model, tokenizer=tok)


def test_unlearn_rejects_empty_fact_list(memorised_model, tok):
    with pytest.raises(LuneError, match="forget set is empty"):
        lune.unlearn([], config=small_config(), model=memorised_model, tokenizer=tok)


def test_unknown_method(memorised_model, tok):
    with pytest.raises(LuneError, match="unknown method 'nope'"):
        lune.unlearn(facts(FORGET_RECORDS), config=small_config(method="nope"), model=memorised_model, tokenizer=tok)


# ---------------------------------------------------------------- run directory


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_run_directory(fact_files, model_dir, tmp_path, memorised_model):
    forget, retain = fact_files
    out = tmp_path / "run"
    cfg = small_config(model=str(model_dir))
    report = lune.unlearn(forget, retain, out=out, config=cfg)
    assert report["out"] == str(out)
    assert report["before"]["usr"] == 0 and report["after"]["usr"] == 1.0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    saved = json.loads((out / "report.json").read_text())
    assert {"before", "after", "cost", "facts", "retain", "training", "directions"} <= set(saved)
    assert COST_KEYS <= set(saved["cost"])
    assert "peft_model" not in saved
    assert saved["after"]["usr"] == 1.0 and saved["before"]["usr"] == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# lune report: lune on") and "| usr |" in md and "## Cost" in md and "The capital of France is" in md
    assert "| train |" in md and "peak RSS MB at its end" in md and "{" not in md.split("## Cost")[1].split("##")[0]

    conf = json.loads((out / "config.json").read_text())
    assert UnlearnConfig.from_dict({k: conf[k] for k in ("run", "lora", "train", "negatives")}) == get_method("lune", cfg.train).resolve(cfg)
    assert conf["lora"]["protect"] == 0.0 and conf["train"]["patience"] == 5  # the settings the run used, defaults filled in
    assert conf["inputs"]["forget"] == str(forget) and conf["inputs"]["retain"] == str(retain)
    import hashlib
    assert conf["inputs"]["forget_sha256"] == hashlib.sha256(forget.read_bytes()).hexdigest()

    negs = read_negatives(out / "negatives.jsonl", lune.read_facts(forget))
    assert len(negs) == report["cost"]["negatives"] == 2 * cfg.negatives.per_fact

    # the saved adapter reproduces the unlearned model on a fresh copy of the base
    tuned = load_adapter(memorised_model, out)
    assert torch.allclose(logits(tuned), logits(report["peft_model"]), atol=1e-6)
    ev = lune.evaluate(forget, model=str(model_dir), adapter=out, config=cfg)
    assert ev["before"]["usr"] == 0 and ev["after"]["usr"] == 1.0
    assert not list(tmp_path.glob(".run*")), "temporary directories left behind"


def test_existing_out_refused_then_overwritten(fact_files, memorised_model, tok, tmp_path, monkeypatch):
    import copy

    forget, _ = fact_files
    out = tmp_path / "run"
    lune.unlearn(forget, out=out, config=small_config(), model=copy.deepcopy(memorised_model), tokenizer=tok)
    first = _snapshot(out)

    # refused before any work: not even measuring the model
    monkeypatch.setattr(api, "measure", lambda *a, **k: pytest.fail("did work before refusing --out"))
    with pytest.raises(LuneError, match="--overwrite") as e:
        lune.unlearn(forget, out=out, config=small_config(), model=copy.deepcopy(memorised_model), tokenizer=tok)
    assert str(out) in str(e.value)
    assert _snapshot(out) == first
    monkeypatch.undo()

    cfg2 = small_config()
    cfg2.negatives.per_fact = 2
    report = lune.unlearn(forget, out=out, config=cfg2, model=copy.deepcopy(memorised_model), tokenizer=tok, overwrite=True)
    assert report["cost"]["negatives"] == 2 * 2
    assert json.loads((out / "config.json").read_text())["negatives"]["per_fact"] == 2
    assert len((out / "negatives.jsonl").read_text().splitlines()) == 4
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "lune-cache") == ["forget.jsonl", "retain.jsonl", "run"]  # no .run.tmp-*/.run.old-*


@pytest.mark.parametrize("where", ["write_report", "train"])
def test_failure_leaves_no_temporary_directory(fact_files, memorised_model, tok, tmp_path, monkeypatch, where):
    forget, _ = fact_files
    parent = tmp_path / "runs"
    parent.mkdir()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, where, boom)
    with pytest.raises(RuntimeError, match="disk full"):
        lune.unlearn(forget, out=parent / "run", config=small_config(), model=memorised_model, tokenizer=tok)
    assert list(parent.iterdir()) == []


def test_failed_overwrite_keeps_previous_run(fact_files, memorised_model, tok, tmp_path, monkeypatch):
    import copy

    forget, _ = fact_files
    out = tmp_path / "runs" / "run"
    lune.unlearn(forget, out=out, config=small_config(), model=copy.deepcopy(memorised_model), tokenizer=tok)
    first = _snapshot(out)
    monkeypatch.setattr(api, "write_report", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        lune.unlearn(forget, out=out, config=small_config(), model=copy.deepcopy(memorised_model), tokenizer=tok, overwrite=True)
    assert _snapshot(out) == first
    assert [p.name for p in out.parent.iterdir()] == ["run"]


def test_atomic_dir(tmp_path):
    out = tmp_path / "d"
    with api.atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and not out.exists()
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(LuneError, match="--overwrite"):
        with api.atomic_dir(out):
            pass
    with api.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize("paraphrases", [True, False])
def test_training_examples(memorised_model, tok, monkeypatch, paraphrases):
    from lune.train import TrainResult

    seen = {}

    def fake_train(model, method, forget, retain, cfg, pad_id, suppressed=None):
        seen.update(forget=forget, retain=retain, pad=pad_id, suppressed=suppressed())
        return TrainResult(steps=1, epochs=1)

    monkeypatch.setattr(api, "train", fake_train)
    cfg = small_config()
    cfg.train.paraphrases = paraphrases
    cfg.negatives.per_fact = 3
    lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), config=cfg, model=memorised_model, tokenizer=tok)
    prompts = [tok.decode([t for t, l in zip(e.input_ids, e.labels) if l == -100]) for e in seen["forget"]]
    n_prompts = 3 if paraphrases else 2  # France + its paraphrase (if trained) + Spain
    assert len(seen["forget"]) == n_prompts * 3
    assert ("The French capital is" in prompts) is paraphrases
    for e in seen["forget"]:
        response = tok.decode([t for t in e.labels if t != -100])
        assert not contains_answer(response, ["Paris", "Madrid"][e.fact])
    assert sorted(tok.decode([t for t in e.labels if t != -100]) for e in seen["retain"]) == ["Berlin", "Rome"]
    assert seen["pad"] == tok.pad_token_id
    assert seen["suppressed"] == (0.0, {0, 1})  # nothing trained yet: every prompt still yields its answer


def test_gradient_checkpointing_gives_the_same_run(memorised_model, tok):
    """Recomputing activations changes memory, not the arithmetic: the same steps, the same forgetting."""
    runs = []
    for ckpt in (False, True):
        cfg = small_config()
        cfg.train.gradient_checkpointing = ckpt
        cfg.lora.lora_dropout = 0.0  # dropout masks are redrawn in the recomputation
        runs.append(lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), config=cfg,
                                 model=memorised_model, tokenizer=tok))
        assert not memorised_model.is_gradient_checkpointing  # handed back as it came
    plain, ckpt = runs
    assert ckpt["cost"]["steps"] == plain["cost"]["steps"] and ckpt["after"]["usr"] == plain["after"]["usr"]
    assert ckpt["after"]["forget_prob"] == pytest.approx(plain["after"]["forget_prob"], rel=1e-3)


def test_contexts_put_an_unrelated_sentence_before_some_targets(memorised_model, tok, monkeypatch):
    from lune.train import TrainResult

    seen = {}

    def fake_train(model, method, forget, retain, cfg, pad_id, suppressed=None):
        seen["forget"] = forget
        return TrainResult(steps=1, epochs=1)

    monkeypatch.setattr(api, "train", fake_train)
    import lune.anchors as A  # the tiny model's own completions of the anchors are noise: give it a sentence
    monkeypatch.setattr(A, "generate", lambda model, tok, ids, **kw: [" the Sahara, which"] * len(ids))
    cfg = small_config()
    cfg.train.paraphrases, cfg.train.anchors, cfg.train.contexts = False, 8, 2
    cfg.negatives.per_fact = 3
    lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    prompts = [tok.decode([t for t, l in zip(e.input_ids, e.labels) if l == -100]).strip() for e in seen["forget"]]
    for fact, plain in [(0, "The capital of France is"), (1, "The capital of Spain is")]:
        mine = [p for p, e in zip(prompts, seen["forget"]) if e.fact == fact]
        assert mine[0] == plain  # of 3 targets, the first stays plain and the last 2 follow a context
        # "<anchor prompt> the Sahara. <prompt>" (the tiny tokenizer spells unknown words <unk>)
        assert all(p.endswith(" . " + plain) and p.startswith("The ") and p != plain for p in mine[1:]), mine
    # a method with one target per prompt (gradient ascent) keeps it plain
    cfg.run.method = "ga"
    lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    prompts = [tok.decode([t for t, l in zip(e.input_ids, e.labels) if l == -100]).strip() for e in seen["forget"]]
    assert prompts == ["The capital of France is", "The capital of Spain is"]
    # --stop: negatives end with end-of-text; gradient ascent's true answers do not
    cfg.negatives.stop = True
    lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert all(e.labels[-1] != tok.eos_token_id for e in seen["forget"])
    cfg.run.method = "lune"
    lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert all(e.labels[-1] == tok.eos_token_id for e in seen["forget"])


def test_context_sentences_cut_the_completion_to_a_clause():
    pairs = [("The largest desert is", " the Sahara, which covers"), ("Water boils at", "\n"), ("The largest desert is", " the Sahara, which")]
    assert context_sentences(pairs) == ["The largest desert is the Sahara."]


def test_answer_sites_are_trained_as_more_forget_examples(memorised_model, tok, monkeypatch):
    from lune.train import TrainResult

    seen, asked = {}, []

    def fake_train(model, method, forget, retain, cfg, pad_id, suppressed=None):
        seen["forget"] = forget
        return TrainResult(steps=1, epochs=1)

    def fake_sites(model, tok_, fmt, facts_, by_fact, per_fact, **kw):
        asked.append(per_fact)
        return [(1, "The capital of Spain is Rome . The capital of Spain is", by_fact[1][0])]

    monkeypatch.setattr(api, "train", fake_train)
    monkeypatch.setattr(api, "answer_sites", fake_sites)
    cfg = small_config()
    cfg.train.paraphrases, cfg.train.anchors = False, 0
    cfg.negatives.per_fact = 2
    report = lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert asked == [] and len(seen["forget"]) == 4 and "sites" not in report["training"]  # sites=0: none
    assert TrainSettings().sites == 4  # on by default
    cfg.train.sites = 3
    report = lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert asked == [3] and len(seen["forget"]) == 5
    site = seen["forget"][-1]
    assert site.fact == 1
    assert tok.decode([t for t, l in zip(site.input_ids, site.labels) if l == -100]).strip() == "The capital of Spain is Rome . The capital of Spain is"
    assert report["training"]["sites"] == [{"fact": 1, "prompt": "The capital of Spain is Rome . The capital of Spain is",
                                            "negative": report["training"]["sites"][0]["negative"]}]
    # gradient ascent trains the true answers: no sites
    cfg.run.method = "ga"
    lune.unlearn(facts(FORGET_RECORDS), config=cfg, model=memorised_model, tokenizer=tok)
    assert asked == [3] and len(seen["forget"]) == 2
