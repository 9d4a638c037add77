"""The command line end to end on a saved tiny model directory (no network, no default model)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from conftest import FORGET_RECORDS, RETAIN_RECORDS, write_jsonl
from lune.cli import main
from lune.models import load_adapter, load_model

FAST = ["--lr", "0.01", "--max-epochs", "30", "--min-epochs", "1", "--batch-size", "8", "--num-samples", "4",
        "--max-new-tokens", "8", "--device", "cpu", "--protect", "0", "--sites", "0"]  # a 2-layer model: plain LoRA
X = torch.tensor([[3, 4, 5, 6, 7, 8]])


def run_cli(argv):
    """(exit code, stdout, stderr); progress bars (\r-separated, on stderr) are dropped from stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    lines = [ln for ln in err.getvalue().replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln]
    return rc, out.getvalue(), "\n".join(lines)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-facts")
    return write_jsonl(d / "forget.jsonl", FORGET_RECORDS), write_jsonl(d / "retain.jsonl", RETAIN_RECORDS)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, model_dir, files):
    """One `lune unlearn` run shared by the eval/merge/generate tests: (run dir, rc, stdout, stderr)."""
    forget, retain = files
    out = tmp_path_factory.mktemp("cli-run") / "run"
    rc, stdout, stderr = run_cli(["unlearn", "--forget", forget, "--retain", retain, "--out", out, "--model", model_dir, *FAST])
    return out, rc, stdout, stderr


def test_unlearn_writes_run_directory(cli_run, model_dir):
    out, rc, stdout, stderr = cli_run
    assert rc == 0, stderr
    assert {p.name for p in out.iterdir()} == {"adapter", "negatives.jsonl", "config.json", "report.json", "report.md"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["usr"] == 0 and report["after"]["usr"] == 1.0
    assert report["model"] == str(model_dir)
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["lr"] == 0.01 and conf["train"]["device"] == "cpu" and conf["negatives"]["num_samples"] == 4
    assert conf["run"]["model"] == str(model_dir)
    lines = stdout.splitlines()
    assert lines[0].split() == ["metric", "before", "after"]
    usr = next(line.split() for line in lines if line.startswith("usr "))
    assert usr == ["usr", "0.000", "1.000"]
    assert any(line.startswith("cost: ") and "trainable of" in line for line in lines)
    assert f"wrote {out}/" in stdout
    assert "lune: error" not in stderr


def test_unlearn_from_config_file_with_overrides(cli_run, files, tmp_path, model_dir):
    run, *_ = cli_run
    forget, _ = files
    out = tmp_path / "run2"
    rc, _, err = run_cli(["unlearn", "--forget", forget, "--out", out, "--config", run / "config.json",
                          "--per-fact", "2", "--target-modules", "q_proj,v_proj", "--early-stop", "false", "--max-epochs", "3"])
    assert rc == 0, err
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["lr"] == 0.01 and conf["run"]["model"] == str(model_dir)  # from --config
    assert conf["negatives"]["per_fact"] == 2 and conf["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert conf["train"]["early_stop"] is False
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["epochs"] == 3 and not report["training"]["stopped_early"]
    assert report["cost"]["negatives"] == 2 * 2


@pytest.mark.parametrize(
    "extra, detail",
    [
        (["--lr", "0"], "lr must be > 0"),
        (["--r", "0"], "r must be >= 1"),
        (["--layers", "5-2"], "layers"),
        (["--kinds", "alternative,bogus"], "unknown kind 'bogus'"),
        (["--format", "chat"], "no chat template"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--target-modules", "c_attn"], "c_attn"),
        (["--layers", "7"], "out of range"),
        (["--config", "/no/such/config.json"], "config file not found"),
        (["--device", "tpu"], "tpu"),
    ],
)
def test_unlearn_bad_settings(files, model_dir, tmp_path, extra, detail):
    forget, _ = files
    out = tmp_path / "run"
    rc, stdout, stderr = run_cli(["unlearn", "--forget", forget, "--out", out, "--model", model_dir, *FAST, *extra])
    assert rc == 2
    assert stderr.startswith("lune: error: ") and detail in stderr, stderr
    assert not out.exists()


def test_unlearn_missing_forget_file(tmp_path, model_dir):
    rc, _, stderr = run_cli(["unlearn", "--forget", tmp_path / "nope.jsonl", "--out", tmp_path / "run", "--model", model_dir, *FAST])
    assert rc == 2 and stderr.startswith("lune: error: ") and "forget file not found" in stderr and "nope.jsonl" in stderr
    assert not (tmp_path / "run").exists()


def test_unlearn_malformed_line(tmp_path, model_dir):
    bad = tmp_path / "forget.jsonl"
    bad.write_text(json.dumps(FORGET_RECORDS[0]) + "\n{not json\n")
    rc, _, stderr = run_cli(["unlearn", "--forget", bad, "--out", tmp_path / "run", "--model", model_dir, *FAST])
    assert rc == 2 and f"lune: error: {bad}:2: malformed JSON" in stderr


def test_unlearn_malformed_retain_line(files, tmp_path, model_dir):
    forget, _ = files
    bad = write_jsonl(tmp_path / "retain.jsonl", [{"prompt": "The capital of Germany is"}])
    rc, _, stderr = run_cli(["unlearn", "--forget", forget, "--retain", bad, "--out", tmp_path / "run", "--model", model_dir, *FAST])
    assert rc == 2 and f"{bad}:1: missing field 'answer'" in stderr


def test_unlearn_existing_out_without_overwrite(cli_run, files, model_dir):
    run, *_ = cli_run
    forget, _ = files
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, _, stderr = run_cli(["unlearn", "--forget", forget, "--out", run, "--model", model_dir, *FAST])
    assert rc == 2 and "lune: error:" in stderr and "--overwrite" in stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("model", ["/no/such/model/dir", "./missing-dir/x/y", "missing.gguf"])
def test_unlearn_unknown_model_path(files, tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forget, _ = files
    rc, _, stderr = run_cli(["unlearn", "--forget", forget, "--out", tmp_path / "run", "--model", model, *FAST])
    assert rc == 2 and stderr.startswith("lune: error: ") and "not found" in stderr


def test_argparse_rejects_non_numbers(files, tmp_path):
    forget, _ = files
    with pytest.raises(SystemExit) as e:
        run_cli(["unlearn", "--forget", forget, "--out", tmp_path / "run", "--lr", "fast"])
    assert e.value.code == 2


def test_eval_with_adapter(cli_run, files, model_dir, tmp_path):
    run, *_ = cli_run
    forget, retain = files
    out = tmp_path / "eval"
    rc, stdout, stderr = run_cli(["eval", "--forget", forget, "--retain", retain, "--model", model_dir, "--adapter", run, "--out", out])
    assert rc == 0, stderr
    usr = next(line.split() for line in stdout.splitlines() if line.startswith("usr "))
    assert usr == ["usr", "0.000", "1.000"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["adapter"] == str(run) and rep["after"]["usr"] == 1.0 and rep["before"]["retain_acc"] == 1.0
    assert (out / "report.md").is_file()
    # without an adapter: the base model only
    rc, stdout, _ = run_cli(["eval", "--forget", forget, "--model", model_dir])
    assert rc == 0
    assert next(line.split() for line in stdout.splitlines() if line.startswith("usr "))[1] == "0.000"


def test_eval_bad_inputs(cli_run, files, model_dir, tmp_path):
    forget, _ = files
    rc, _, stderr = run_cli(["eval", "--forget", forget, "--model", model_dir, "--adapter", tmp_path])
    assert rc == 2 and "no adapter found" in stderr
    rc, _, stderr = run_cli(["eval", "--forget", forget, "--model", model_dir, "--format", "bogus"])
    assert rc == 2 and "format must be one of" in stderr


def test_merge(cli_run, model_dir, tmp_path):
    run, *_ = cli_run
    out = tmp_path / "merged"
    rc, stdout, stderr = run_cli(["merge", "--model", model_dir, "--adapter", run, "--out", out])
    assert rc == 0, stderr
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert f"wrote merged model to {out}" in stdout
    merged, _ = load_model(str(out), device="cpu")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base, _ = load_model(str(model_dir), device="cpu")
    tuned = load_adapter(base, run)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=X).logits, tuned(input_ids=X).logits, atol=1e-5)
    rc, _, stderr = run_cli(["merge", "--model", model_dir, "--adapter", run, "--out", out])
    assert rc == 2 and "--overwrite" in stderr


def test_generate(cli_run, model_dir):
    run, *_ = cli_run
    rc, stdout, stderr = run_cli(["generate", "--model", model_dir, "--adapter", run, "--max-new-tokens", "4",
                                  "The capital of France is", "The capital of Germany is"])
    assert rc == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == "prompt:    The capital of France is"
    assert lines[1] == "base:      'Paris .'"
    assert lines[2].startswith("unlearned: ") and "Paris" not in lines[2]
    assert "prompt:    The capital of Germany is" in lines
    assert "base:      'Berlin .'" in lines
    rc, stdout, _ = run_cli(["generate", "--model", model_dir, "The capital of France is"])
    assert rc == 0 and "base:      'Paris .'" in stdout and "unlearned:" not in stdout


def test_help_is_cheap():
    with pytest.raises(SystemExit) as e:
        run_cli(["--help"])
    assert e.value.code == 0


def test_unlearn_with_negatives_file(cli_run, files, model_dir, tmp_path):
    run, *_ = cli_run
    forget, _ = files
    out = tmp_path / "run-neg"
    negs = run / "negatives.jsonl"
    rc, _, stderr = run_cli(["unlearn", "--forget", forget, "--out", out, "--model", model_dir, "--negatives", negs, *FAST])
    assert rc == 0, stderr
    def recs(path):
        return [(r["prompt"], r["negative"].strip(), r["kind"]) for r in map(json.loads, path.read_text().splitlines())]

    assert recs(out / "negatives.jsonl") == recs(negs)
    inputs = json.loads((out / "config.json").read_text())["inputs"]
    assert inputs["negatives"] == str(negs) and len(inputs["negatives_sha256"]) == 64
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "The capital of Spain is", "negative": "madrid!"}])
    rc, _, stderr = run_cli(["unlearn", "--forget", forget, "--out", tmp_path / "x", "--model", model_dir, "--negatives", bad, *FAST])
    assert rc == 2 and f"{bad}:1:" in stderr and "true answer" in stderr


def test_demo_on_local_model(model_dir, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("old")  # demo always replaces its run directory
    rc, stdout, stderr = run_cli(["demo", "--out", out, "--model", model_dir, *FAST, "--max-epochs", "2"])
    assert rc == 0, stderr
    assert not (out / "stale.txt").exists() and (out / "report.json").is_file()
    assert "'The capital of France is'" in stdout and "before:" in stdout and "after:" in stdout


def test_method_options_on_the_command_line(tmp_path, model_dir, files):
    forget, retain = files
    out = tmp_path / "npo"
    rc, stdout, stderr = run_cli(["unlearn", "--forget", forget, "--retain", retain, "--out", out, "--model", model_dir,
                                  *FAST, "--method", "npo", "--npo-beta", "0.25", "--anchors", "0"])
    assert rc == 0, stderr
    conf = json.loads((out / "config.json").read_text())
    assert conf["run"]["method"] == "npo" and conf["method"] == {"beta": 0.25}
    assert json.loads((out / "report.json").read_text())["method"] == "npo"
    # a --config from that run reproduces the options
    rc, _, stderr = run_cli(["unlearn", "--forget", forget, "--out", tmp_path / "again", "--config", out / "config.json", *FAST, "--max-epochs", "1"])
    assert rc == 0, stderr
    assert json.loads((tmp_path / "again" / "config.json").read_text())["method"] == {"beta": 0.25}


@pytest.mark.parametrize("argv,message", [
    (["--npo-beta", "0.2"], "--npo-beta is an option of --method npo, but the method is 'lune'"),
    (["--method", "npo", "--npo-beta", "-1"], "beta must be > 0"),
    (["--method", "nope"], "unknown method 'nope'"),
])
def test_method_option_errors(argv, message, tmp_path, model_dir, files):
    rc, _, stderr = run_cli(["unlearn", "--forget", files[0], "--out", tmp_path / "x", "--model", model_dir, *FAST, *argv])
    assert rc == 2 and message in stderr, stderr
    assert not (tmp_path / "x").exists()


def test_full_flag_writes_a_model_directory(tmp_path, model_dir, files):
    out = tmp_path / "full"
    rc, stdout, stderr = run_cli(["unlearn", "--forget", files[0], "--out", out, "--model", model_dir, *FAST,
                                  "--method", "ga", "--full", "true", "--lr", "0.001"])
    assert rc == 0, stderr
    assert {p.name for p in out.iterdir()} == {"model", "config.json", "report.json", "report.md"}
    model, _ = load_model(str(out / "model"), device="cpu")
    assert model.config.num_hidden_layers == 2


def test_memit_run_merges_and_evaluates_like_any_adapter(tmp_path, model_dir, files):
    """An edit method's output goes through merge and eval exactly like a LoRA run."""
    run = tmp_path / "memit"
    rc, _, stderr = run_cli(["unlearn", "--forget", files[0], "--out", run, "--model", model_dir, *FAST, "--method", "memit",
                             "--memit-layers", "0-1", "--memit-stats-corpus", "identity", "--memit-n-prefixes", "1",
                             "--memit-v-steps", "3"])
    assert rc == 0, stderr
    out = tmp_path / "merged"
    rc, _, stderr = run_cli(["merge", "--model", model_dir, "--adapter", run, "--out", out])
    assert rc == 0, stderr
    merged, _ = load_model(str(out), device="cpu")
    base, _ = load_model(str(model_dir), device="cpu")
    tuned = load_adapter(base, run)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=X).logits, tuned(input_ids=X).logits, atol=1e-5)
    plain, _ = load_model(str(model_dir), device="cpu")
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    assert changed and changed <= {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)}, changed
    rc, stdout, stderr = run_cli(["eval", "--model", model_dir, "--adapter", run, "--forget", files[0], "--device", "cpu"])
    assert rc == 0, stderr
    assert stdout.splitlines()[0].split() == ["metric", "before", "after"]
