"""Fact-level unlearning metrics (LUNE paper §4: USR, APR, GUR) on the shared primitives.

A *probe* is one prompt of a fact (its main prompt or a paraphrase). A probe is *answered* when
the greedy completion contains the fact's answer (normalised, whole-word match).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..data import Fact, PromptFormat, contains_answer, make_example
from .core import generate, response_logprobs


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    help: str


METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, higher_is_better: bool, help: str) -> None:
    METRICS[name] = MetricInfo(name, higher_is_better, help)


register_metric("usr", True, "Unlearning success rate: share of forget prompts whose greedy completion no longer contains the answer.")
register_metric("apr", True, "Share of forget paraphrases whose greedy completion does not contain the answer (USR under paraphrase).")
register_metric("retain_acc", True, "Share of retain probes whose greedy completion contains the answer.")
register_metric("gur", True, "General utility retention: retain_acc after / retain_acc before.")
register_metric("forget_prob", False, "Mean probability of the true answer given a forget prompt.")
register_metric("retain_prob", True, "Mean probability of the true answer given a retain probe.")
register_metric("usr_known", True, "USR over the forget prompts the original model answered.")
register_metric("apr_known", True, "APR over the forget paraphrases the original model answered.")
register_metric("repeats", False, "Share of forget completions (prompts and paraphrases) that say a word or phrase twice back to back (\"Brest. Brest.\"): a looping, degenerate answer.")


def repeats(text: str, longest: int = 4) -> bool:
    """True when a run of 1..``longest`` words is immediately followed by itself, ignoring punctuation and case.

    "Krieg. Krieg." and "is in Lyon, is in Lyon" loop; "Paris.\n\nThe city of Paris" does not. Words
    are letters only, so numbers ("1990, 1991") and list markers do not count.
    """
    words = re.findall(r"[^\W\d_]+", text.casefold())
    return any(words[i : i + n] == words[i + n : i + 2 * n] for n in range(1, longest + 1) for i in range(len(words) - 2 * n + 1))


def probes(facts: list[Fact], paraphrases: bool = True) -> list[tuple[int, str, str]]:
    """(fact index, kind, prompt text) for every prompt of every fact; kind is 'prompt' or 'paraphrase'."""
    out = []
    for i, f in enumerate(facts):
        out.append((i, "prompt", f.prompt))
        if paraphrases:
            out += [(i, "paraphrase", p) for p in f.paraphrases]
    return out


def score_probes(model, tok, fmt: PromptFormat, facts: list[Fact], max_new_tokens: int = 16, batch_size: int = 32, desc: str | None = None) -> list[dict]:
    """Greedy completion, answered flag and answer log-probability for every probe of ``facts``."""
    ps = probes(facts)
    if not ps:
        return []
    ids = [fmt.prompt_ids(text, facts[i].style) for i, _, text in ps]
    completions = generate(model, tok, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    examples = [make_example(fmt, text, facts[i].answer, facts[i].style, end=False) for i, _, text in ps]
    lps = response_logprobs(model, examples, tok.pad_token_id, batch_size=batch_size)
    return [
        {"fact": i, "kind": kind, "prompt": text, "completion": c, "answered": contains_answer(c, facts[i].answer), "answer_logprob": lp}
        for (i, kind, text), c, lp in zip(ps, completions, lps)
    ]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(forget_rows: list[dict], retain_rows: list[dict], before: dict | None = None) -> dict:
    """Metrics of one model state. With ``before`` (the same probes on the original model) adds gur and *_known."""
    prompts = [r for r in forget_rows if r["kind"] == "prompt"]
    paras = [r for r in forget_rows if r["kind"] == "paraphrase"]
    m: dict = {
        "usr": _mean([float(not r["answered"]) for r in prompts]),
        "apr": _mean([float(not r["answered"]) for r in paras]),
        "retain_acc": _mean([float(r["answered"]) for r in retain_rows]),
        "forget_prob": _mean([math.exp(r["answer_logprob"]) for r in prompts]),
        "retain_prob": _mean([math.exp(r["answer_logprob"]) for r in retain_rows]),
        "repeats": _mean([float(repeats(r["completion"])) for r in forget_rows]),
        "n_forget_prompts": len(prompts),
        "n_forget_paraphrases": len(paras),
        "n_retain_probes": len(retain_rows),
    }
    if before is not None:
        b_forget, b_retain = before["forget_rows"], before["retain_rows"]
        known = [r for r, b in zip(forget_rows, b_forget) if b["answered"]]
        m["usr_known"] = _mean([float(not r["answered"]) for r in known if r["kind"] == "prompt"])
        m["apr_known"] = _mean([float(not r["answered"]) for r in known if r["kind"] == "paraphrase"])
        m["n_known_prompts"] = sum(1 for r in known if r["kind"] == "prompt")
        m["n_known_paraphrases"] = sum(1 for r in known if r["kind"] == "paraphrase")
        acc0 = _mean([float(r["answered"]) for r in b_retain])
        m["gur"] = (m["retain_acc"] / acc0) if (acc0 and m["retain_acc"] is not None) else None
    return m
