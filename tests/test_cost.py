"""FLOPs estimate, matmul peak cache and the cost block."""

from __future__ import annotations

import json

import torch

from lune.config import LoraSettings
from lune.cost import CostMeter, linear_params, matmul_peak, through_params, throughput, train_flops
from lune.models import attach_lora


def test_linear_params_split_body_trainable_and_head(tiny_model):
    body, trainable, head = linear_params(tiny_model)
    cfg = tiny_model.config
    per_layer = 2 * cfg.hidden_size * cfg.hidden_size + 2 * cfg.hidden_size * (cfg.hidden_size // 2) + 3 * cfg.hidden_size * cfg.intermediate_size
    assert body == cfg.num_hidden_layers * per_layer  # q,o: d*d; k,v (2 kv heads of 4): d*d/2; gate, up, down
    assert trainable == 0  # the fixture is frozen
    assert head == cfg.vocab_size * cfg.hidden_size


def test_full_training_flops_are_six_n_per_token(tiny_model):
    for p in tiny_model.parameters():
        p.requires_grad_(True)
    body, trainable, head = linear_params(tiny_model)
    assert trainable == body
    assert train_flops(tiny_model, tokens=10, logit_tokens=0) == 6 * body * 10
    assert train_flops(tiny_model, tokens=10, logit_tokens=3) == 6 * body * 10 + 4 * head * 3
    assert train_flops(tiny_model, tokens=10, logit_tokens=0, extra_forward_tokens=5) == 6 * body * 10 + 2 * body * 5


def test_lora_training_flops_are_about_four_n_per_token(tiny_model):
    model = attach_lora(tiny_model, LoraSettings(r=2, layers="all", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    body, trainable, _ = linear_params(model)
    assert 0 < trainable < body / 10
    d = model.config.hidden_size
    assert through_params(model) == body - d * d  # all but layer 0's q_proj, whose input needs no gradient
    assert train_flops(model, tokens=10, logit_tokens=0) == (4 * body - 2 * d * d) * 10 + 2 * trainable * 10


def test_backward_stops_at_the_lowest_adapter(tiny_model):
    d, f = tiny_model.config.hidden_size, tiny_model.config.intermediate_size
    upper = attach_lora(tiny_model, LoraSettings(r=2, layers="1", target_modules=["down_proj"]))
    body, trainable, _ = linear_params(upper)
    # the last layer's down projection is the lowest adapted module: only its adapter is gone through
    assert through_params(upper) == trainable
    assert train_flops(upper, tokens=10, logit_tokens=0) == 2 * body * 10 + 4 * trainable * 10


def test_matmul_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNE_CACHE", str(tmp_path))
    peak = matmul_peak("cpu", torch.float32, refresh=True)
    assert peak > 1e8  # any real CPU does more than 0.1 GFLOP/s
    cache = json.loads((tmp_path / "matmul_peak.json").read_text())
    (key,) = cache
    assert "float32" in key and cache[key] == peak
    cache[key] = 123.0
    (tmp_path / "matmul_peak.json").write_text(json.dumps(cache))
    assert matmul_peak("cpu", torch.float32) == 123.0  # read back from the file, not re-measured


def test_throughput_fields():
    t = throughput(flops=4_000_000_000, seconds=2.0, peak=8e9)
    assert t == {"train_flops": 4_000_000_000, "achieved_gflops": 2.0, "peak_gflops": 8.0, "mfu": 0.25}


def test_cost_meter_phases_record_seconds_and_the_peak_so_far():
    meter = CostMeter()
    meter.mark("load")
    with meter.phase("work"):
        big = torch.ones(64, 2**20)  # 256 MiB resident during "work"
    with meter.phase("work"):  # a repeated phase adds up
        pass
    del big
    block = meter.block(steps=3)
    assert list(block["phases_s"]) == ["load", "work"] and block["steps"] == 3
    assert 256 < block["phases_peak_rss_mb"]["work"] and block["phases_peak_rss_mb"]["load"] <= block["phases_peak_rss_mb"]["work"]
    assert block["phases_peak_rss_mb"]["work"] <= block["peak_rss_mb"] * 1.01  # the kernel updates the high-water mark lazily
    assert sum(block["phases_s"].values()) <= block["wall_s"] + 0.01  # each rounded to ms
    assert "phases_s" not in CostMeter().block()  # no phases, no keys


def test_peak_rss_is_this_process_own_not_its_parents():
    """A child of a process holding a lot of memory reports its own peak (Linux carries ru_maxrss across fork/exec)."""
    import subprocess
    import sys

    from lune.cost import peak_rss_mb

    held = torch.ones(128, 2**20)  # 512 MiB resident in this (the parent) process
    assert peak_rss_mb() > 512
    code = "from lune.cost import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < peak_rss_mb() - 400, f"child reports {child:.0f} MB: the parent's {peak_rss_mb():.0f} MB leaked into it"
    del held
