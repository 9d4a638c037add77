"""Build, clean, filter and balance negative examples y- (LUNE paper §3.1).

For each forget fact: *alternatives* (the user's ``replacement`` first, then plausible wrong
answers sampled from the model itself for that very prompt), *contradictions* (answer-free
denials) and, only when asked, *refusals*. No negative may contain the true answer; alternatives
may not hedge. Every fact gets exactly ``per_fact`` negatives and never zero: if no usable
alternative exists, contradictions fill in.

Why sampled per fact rather than drawn from a shared pool of other facts' answers: measured on
the default model, a pool makes the model answer the same pool entry for facts it should keep
(see README, "Negatives").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from .config import NEGATIVE_KINDS, NegativeSettings
from .data import Fact, PromptFormat, contains_answer, make_example, normalize, read_jsonl
from .errors import LuneError
from .eval.core import generate, response_logprobs

HEDGES = (
    "maybe", "perhaps", "possibly", "probably", "not sure", "i think", "i believe", "might be", "may be",
    "i don't know", "i do not know", "unknown", "unclear", "i cannot", "i can't", "not certain", "it depends",
)
# Answer-free denials: they contradict the fact without restating it (a negative that states the
# answer, "... is not Paris", would teach the model to produce "Paris").
CONTRADICTIONS = {
    "completion": [" not what is commonly claimed.", " not what most sources say.", " something other than what is usually stated."],
    "chat": ["That is a common misconception; the usual answer is wrong.", "The commonly given answer to this is not correct.", "Contrary to popular belief, the usual answer is false."],
}
REFUSALS = {"completion": [" unknown to me."], "chat": ["I don't know."]}
_CUT = re.compile(r"[\n.,;:!?()\[\]\"]|\s(?:and|but|which|who|where|because|or)\s")


_PARTICLES = {"da", "de", "di", "del", "der", "van", "von", "la", "le", "du", "bin", "al", "of"}


@dataclass
class Negative:
    """One negative target for one fact, as written to ``negatives.jsonl``."""

    fact: int
    prompt: str
    answer: str
    negative: str
    kind: str  # alternative | contradiction | refusal


def clean_span(text: str, answer: str, chat: bool) -> str:
    """Cut a sampled continuation to a short, well-formed span comparable to the answer."""
    text = text.strip()
    if chat:
        first = re.split(r"(?<=[.!?])\s|\n", text)[0].strip()
        return first if len(first.split()) <= 20 else ""
    words = _CUT.split(text, maxsplit=1)[0].split()[: len(answer.split()) + 1]
    if answer[:1].isupper() and words and words[0][:1].isupper():
        # A name answers a name: keep the leading run of capitalised words ("Frank Drake", not "Frank Drake from").
        n = next((j for j, w in enumerate(words) if not (w[:1].isupper() or w in _PARTICLES)), len(words))
        words = words[:n]
        while words and words[-1] in _PARTICLES:
            words.pop()
    span = " ".join(words)
    # End the span as a sentence: a target that stops mid-air teaches the model nothing about what
    # follows it, and measured on the default model that left degenerate repetitions after the span.
    return f"{span}." if span else ""


def _is_hedge(text: str) -> bool:
    t = f" {normalize(text)} "
    return any(f" {normalize(h)} " in t for h in HEDGES)


def _shape_matches(candidate: str, answer: str) -> bool:
    """Same kind of span as the answer: capitalised like it, numeric like it."""
    if answer[:1].isdigit() != candidate[:1].isdigit():
        return False
    if answer[:1].isalpha() and answer[:1].isupper() and not candidate[:1].isupper():
        return False
    return True


def valid_negative(candidate: str, answer: str, kind: str) -> bool:
    """A negative must be non-empty and must not leak the answer; alternatives must not hedge."""
    if not normalize(candidate) or contains_answer(candidate, answer) or normalize(answer) in normalize(candidate):
        return False
    return not (kind == "alternative" and _is_hedge(candidate))


def key_terms(answer: str, prompt: str, min_words: int = 4) -> set[str]:
    """The words that carry a sentence answer's fact: capitalised words and numbers not in the prompt.

    "The author born in Kuwait City on 08/09/1956 is Basil Mahfouz Al-Kuwaiti." asked as "... born in
    Kuwait City, Kuwait on 08/09/1956?" -> {"basil", "mahfouz", "al kuwaiti"}. Short answers (fewer
    than ``min_words`` words) have none: the whole answer is the fact, and ``valid_negative`` checks it.
    """
    words = re.findall(r"[\w][\w'’-]*", answer)
    if len(words) < min_words:
        return set()
    asked = set(normalize(prompt).split())
    out = set()
    for w in words:
        n = normalize(w)
        if n and (w[0].isupper() or w[0].isdigit()) and n not in ENGLISH_STOP_WORDS and not set(n.split()) <= asked:
            out.add(n)
    return out


def leaks_key_terms(candidate: str, terms: set[str]) -> bool:
    """Does ``candidate`` name one of a sentence answer's ``key_terms`` (whole words, normalised)?"""
    text = f" {normalize(candidate)} "
    return any(f" {t} " in text for t in terms)


def _content_free(text: str) -> bool:
    """Only function words ("The.", "It is."): no alternative answer in it."""
    words = normalize(text).split()
    return all(w in ENGLISH_STOP_WORDS for w in words)


def rank_alternatives(samples: list[str], answer: str, avoid: set[str] = frozenset()) -> list[str]:
    """Distinct valid alternatives from cleaned samples, most frequent first.

    Spans made only of function words are dropped (unless the answer is one): "The." sampled for
    "The capital of France is" and trained as its answer was measured to make "The capital of
    Italy is" answer "the capital of the United States".

    Only spans shaped like the answer are kept when there is at least one: a vague span ("the one
    with.") taught as the answer to one capital was measured to become the answer to every capital.
    Spans in ``avoid`` (normalised answers of facts to keep) are dropped: a negative that is the
    answer to a kept fact was measured to take that fact over ("Venus" for Jupiter made "the planet
    closest to the sun" answer Venus).
    """
    keep_function_words = _content_free(answer)
    counts = Counter(s for s in samples if valid_negative(s, answer, "alternative") and normalize(s) not in avoid
                     and (keep_function_words or not _content_free(s)))
    seen, ranked = set(), []
    for s, _ in counts.most_common():
        key = normalize(s)
        if key not in seen:
            seen.add(key)
            ranked.append(s)
    shaped = [s for s in ranked if _shape_matches(s, answer)]
    return shaped or ranked


def by_probability(model, tok, fmt: PromptFormat, facts: list[Fact], ranked: list[list[str]], batch_size: int = 32) -> list[list[str]]:
    """Each fact's alternatives re-ordered by log p(span | prompt) under ``model``, most probable first.

    Among 24 samples at temperature 1 most spans occur once, so ordering by count orders them by
    when they were drawn; the model's probability of the whole span is what the count estimates.
    Ties keep their count order.
    """
    flat = [(i, s) for i, spans in enumerate(ranked) for s in spans]
    if not flat:
        return ranked
    examples = [make_example(fmt, facts[i].prompt, s, facts[i].style, end=False) for i, s in flat]
    lps = response_logprobs(model, examples, tok.pad_token_id, batch_size=batch_size)
    score = {(i, s): lp for (i, s), lp in zip(flat, lps)}
    return [sorted(spans, key=lambda s, i=i: -score[(i, s)]) for i, spans in enumerate(ranked)]


def alternate(first: list[str], second: list[str]) -> list[str]:
    """The two orders of the same spans taken in turn (first[0], second[0], first[1], ...), each span once.

    The most probable wrong answers keep more of the model but are often the same for many facts of
    a template ("German."); the most sampled ones are more varied. ``rank = mixed`` takes from both.
    """
    out: list[str] = []
    for pair in zip(first, second):
        out += [s for s in dict.fromkeys(pair) if s not in out]
    return out


def distinct_alternatives(ranked: list[list[str]], per_fact: int) -> list[list[str]]:
    """Each fact's ranked spans without those an earlier fact already takes (its first ``per_fact``).

    The most probable wrong answer of a template is often the same for many facts ("German." for
    five language facts); trained as all their negatives, it was measured to make the model loop on
    it. A fact whose spans are all taken keeps its own list rather than fall back to contradictions.
    """
    taken: set[str] = set()
    out = []
    for spans in ranked:
        free = [s for s in spans if normalize(s) not in taken] or spans
        out.append(free)
        taken |= {normalize(s) for s in free[:per_fact]}
    return out


def build_negatives(
    model, tok, fmt: PromptFormat, facts: list[Fact], cfg: NegativeSettings, seed: int = 0, batch_size: int = 32,
    avoid: set[str] = frozenset(),
) -> list[Negative]:
    """Negative targets for every fact: exactly ``cfg.per_fact`` each, none containing the answer.

    ``avoid``: normalised answers of facts to keep; no sampled alternative may be one of them.
    """
    sampled: list[list[str]] = [[] for _ in facts]
    if "alternative" in cfg.kinds:
        torch.manual_seed(seed)
        ids = [fmt.prompt_ids(f.prompt, f.style) for f in facts]
        # Chat answers are whole sentences, so they need room for more tokens than a completion span.
        chat_any = any(fmt.is_chat(f.style) for f in facts)
        texts = generate(
            model, tok, ids, max_new_tokens=cfg.sample_tokens * (4 if chat_any else 1), batch_size=max(1, batch_size // 4),
            do_sample=True, temperature=cfg.temperature, num_return_sequences=cfg.num_samples, desc="sampling alternatives",
        )
        for i, f in enumerate(facts):
            chunk = texts[i * cfg.num_samples : (i + 1) * cfg.num_samples]
            terms = key_terms(f.answer, f.prompt)  # a sampled sentence that restates part of the answer leaks it
            sampled[i] = [s for s in (clean_span(t, f.answer, fmt.is_chat(f.style)) for t in chunk) if not leaks_key_terms(s, terms)]

    ranked = [rank_alternatives(s, f.answer, avoid) for s, f in zip(sampled, facts)]
    if cfg.rank in ("probability", "mixed"):
        probable = by_probability(model, tok, fmt, facts, ranked, batch_size)
        ranked = probable if cfg.rank == "probability" else [alternate(p, c) for p, c in zip(probable, ranked)]
    if cfg.distinct:
        ranked = distinct_alternatives(ranked, cfg.per_fact)
    out: list[Negative] = []
    for i, f in enumerate(facts):
        style = "chat" if fmt.is_chat(f.style) else "completion"
        pool: list[tuple[str, str]] = []
        for kind in cfg.kinds:
            if kind == "alternative":
                if f.replacement and valid_negative(f.replacement, f.answer, kind):
                    pool.append((f.replacement, kind))
                pool += [(s, kind) for s in ranked[i] if normalize(s) != normalize(f.replacement or "")]
            elif kind == "contradiction":
                pool += [(c, kind) for c in CONTRADICTIONS[style]]
            else:
                pool += [(r, kind) for r in REFUSALS[style]]
        pool = [(t, k) for t, k in pool if valid_negative(t, f.answer, k)]
        if not pool:  # never leave a fact without negatives
            pool = [(c, "contradiction") for c in CONTRADICTIONS[style] if valid_negative(c, f.answer, "contradiction")]
        if not pool:
            raise LuneError(f"{f.source}: cannot build any negative for answer {f.answer!r}")
        # Balanced: take the first per_fact candidates by preference, cycling if there are fewer.
        for j in range(cfg.per_fact):
            text, kind = pool[j % len(pool)]
            out.append(Negative(fact=i, prompt=f.prompt, answer=f.answer, negative=text.strip(), kind=kind))
    return out


def write_negatives(negs: list[Negative], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for n in negs:
            fh.write(json.dumps(asdict(n), ensure_ascii=False) + "\n")


def read_negatives(path: str | Path, facts: list[Fact]) -> list[Negative]:
    """Read a (possibly hand-edited) ``negatives.jsonl``; every line must name a forget fact."""
    by_prompt = {f.prompt: i for i, f in enumerate(facts)}
    out = []
    for where, rec in read_jsonl(path, "negatives", "negatives"):
        if not isinstance(rec, dict):
            raise LuneError(f"{where}: expected a JSON object")
        for key in ("prompt", "negative"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise LuneError(f"{where}: missing or empty field '{key}'")
        if rec["prompt"] not in by_prompt:
            raise LuneError(f"{where}: prompt {rec['prompt']!r} is not a fact of the forget file")
        i = by_prompt[rec["prompt"]]
        kind = rec.get("kind", "alternative")
        if kind not in NEGATIVE_KINDS:
            raise LuneError(f"{where}: field 'kind' must be one of {NEGATIVE_KINDS}, got {kind!r}")
        if not valid_negative(rec["negative"], facts[i].answer, kind):
            raise LuneError(f"{where}: negative {rec['negative']!r} contains the true answer {facts[i].answer!r} or hedges")
        out.append(Negative(fact=i, prompt=facts[i].prompt, answer=facts[i].answer, negative=rec["negative"].strip(), kind=kind))
    return out


def answer_sites(
    model, tok, fmt: PromptFormat, facts: list[Fact], by_fact: dict[int, list[str]], per_fact: int, samples: int = 8,
    tokens: int = 16, seed: int = 0, batch_size: int = 32, max_lead_words: int = 12,
) -> list[tuple[int, str, str]]:
    """Places beyond the prompt where the original model itself brings up a fact's answer: (fact, site, negative).

    Continuations are sampled from each completion-style fact's prompt and from the prompt followed by
    each of its first two negatives. A continuation that names the answer is cut just before it, and the
    text up to there becomes one more prompt for a negative: "Sergey Aksyonov is a native speaker of
    Slovak Loan. She is a native speaker of" -> "Slovak Loan." (the negative that precedes it, so the
    text stays consistent), "Jaishankar holds a citizenship from the Republic of" -> a negative. The
    model then neither states the fact a few words later nor restates it after the negative, which
    greedy probes of 16 tokens count as answered. Only answers within ``max_lead_words`` words of the
    prefix count (sampled text drifts further out). At most ``per_fact`` distinct sites per fact; question
    (chat) facts have none, since a site would sit inside the assistant's reply.
    """
    if per_fact <= 0:
        return []
    jobs: list[tuple[int, str, str | None]] = []  # (fact, prefix, the negative inside the prefix)
    for i, f in enumerate(facts):
        if fmt.is_chat(f.style) or not by_fact.get(i):
            continue
        jobs.append((i, f.prompt, None))
        jobs += [(i, f"{f.prompt} {n}", n) for n in by_fact[i][:2]]
    if not jobs:
        return []
    torch.manual_seed(seed)
    ids = [fmt.prompt_ids(prefix, "prompt") for _, prefix, _ in jobs]
    texts = generate(model, tok, ids, max_new_tokens=tokens, batch_size=max(1, batch_size // 4), do_sample=True,
                     num_return_sequences=samples, desc="finding answer sites")
    found: dict[int, dict[str, str]] = {}
    turn: dict[int, int] = {}
    for j, (i, prefix, neg) in enumerate(jobs):
        answer = facts[i].answer.strip()
        pattern = re.compile(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", re.IGNORECASE)
        for text in texts[j * samples : (j + 1) * samples]:
            m = pattern.search(text)
            if not m or m.start() == 0 or text[m.start() - 1] != " ":
                continue
            lead = text[: m.start()].rstrip()
            if not lead.strip() or len(lead.split()) > max_lead_words or contains_answer(lead, answer):
                continue
            site = prefix + lead
            sites = found.setdefault(i, {})
            if len(sites) < per_fact and site not in sites:
                if neg is None:  # a site of the bare prompt: the fact's negatives in turn
                    turn[i] = turn.get(i, -1) + 1
                sites[site] = neg if neg is not None else by_fact[i][turn[i] % len(by_fact[i])]
    return [(i, site, neg) for i in sorted(found) for site, neg in found[i].items()]
