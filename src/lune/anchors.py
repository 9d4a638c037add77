"""Retain targets that need no retain data: anchors and subject-swapped neighbours.

Both keep the original model's *own* greedy completion of a prompt as a retain target, so nothing
needs to be true or known:

* **anchors**: built-in general-knowledge prompts (``resources/anchors.txt``) hold the model's
  general behaviour in place;
* **neighbours**: each forget prompt with its subject swapped for other entities ("The capital of
  France is" -> "The capital of Poland is"). They pin the prompt's *template* to its old behaviour
  for every subject but the forgotten one, which is what keeps an edit specific. Measured on the
  default model, without them the negatives for one capital leaked into the other capitals
  (README, "Defaults"). ROME's KL on "{subject} is a" prompts serves the same purpose.

Completions that state a forget answer are dropped: keeping them would fight the forget loss.
"""

from __future__ import annotations

import random
import re
from importlib import resources

from .data import Example, Fact, PromptFormat, contains_answer, make_example
from .eval.core import generate

TOKENS = 8  # length of the kept completion of each anchor / neighbour prompt
_LEADING = {"The", "A", "An", "In", "On", "At", "This", "That", "Who", "What", "When", "Where", "Which", "How", "Why"}
_RUN = re.compile(r"[A-Z][\w.'’-]*(?:\s+(?:(?:of|the|da|de|van|von|and|del|du)\s+)?[A-Z][\w.'’-]*)*")


def anchor_prompts(n: int | None = None) -> list[str]:
    text = (resources.files("lune") / "resources" / "anchors.txt").read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return prompts[:n] if n is not None else prompts


def find_subject(prompt: str, subject: str | None = None) -> str | None:
    """The fact's subject in ``prompt``: the given one if it occurs, else the longest capitalised run."""
    if subject and subject in prompt:
        return subject
    runs = []
    for m in _RUN.finditer(prompt):
        words = m.group(0).split()
        while words and words[0] in _LEADING:  # "The Mona Lisa" -> "Mona Lisa"; a lone "The" -> nothing
            words = words[1:]
        if words:
            runs.append(" ".join(words))
    return max(runs, key=len) if runs else None


def entity_pool() -> list[str]:
    """Entities to swap in: the subjects of the built-in anchor prompts."""
    return sorted({s for p in anchor_prompts() if (s := find_subject(p))})


def neighbour_prompts(facts: list[Fact], per_prompt: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, style): each fact's prompt and paraphrases with the subject replaced by ``per_prompt`` other entities."""
    rng = random.Random(seed)
    pool = entity_pool()
    out: list[tuple[str, str]] = []
    for f in facts:
        for prompt in [f.prompt] + f.paraphrases:
            subj = find_subject(prompt, f.subject)
            if subj is None:
                continue
            others = [e for e in pool if e.lower() != subj.lower()]
            out += [(prompt.replace(subj, e), f.style) for e in rng.sample(others, min(per_prompt, len(others)))]
    return list(dict.fromkeys(out))


def self_targets(
    model, tok, fmt: PromptFormat, prompts: list[tuple[str, str]], forget: list[Fact], batch_size: int = 32
) -> tuple[list[Example], list[str]]:
    """Retain examples whose targets are the model's own greedy completions of (prompt, style) pairs.

    Returns the examples and the kept completions (in the same order).
    """
    if not prompts:
        return [], []
    ids = [fmt.prompt_ids(p, style) for p, style in prompts]
    outs = generate(model, tok, ids, max_new_tokens=TOKENS, batch_size=batch_size, desc="retain targets")
    keep = [(p, st, o) for (p, st), o in zip(prompts, outs) if o.strip() and not any(contains_answer(o, f.answer) for f in forget)]
    return [make_example(fmt, p, o, st, end=False) for p, st, o in keep], [o for _, _, o in keep]
