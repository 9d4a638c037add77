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

import torch

from .data import Example, Fact, PromptFormat, contains_answer, make_example
from .eval.core import generate, next_token_logits

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


def _is_content(word: str) -> bool:
    return word.isalpha() and (len(word) >= 4 or word[:1].isupper())


def swapped_prompts(
    model, tok, facts: list[Fact], per_prompt: int, top_k: int = 24, min_prob: float = 0.01, batch_size: int = 32
) -> list[tuple[str, str]]:
    """(prompt, style): each forget prompt with one content word replaced by a word the model itself expects there.

    For every content word after the first, the original model's next-token distribution on the
    text before it proposes replacements ("The [largest] planet" -> "smallest", "closest"; "The
    capital of [France]" -> "Canada", "Spain"). Unlike subject swaps this needs no subject, and the
    swapped-in words are the ones the model is most likely to be asked about. Candidates are taken
    round-robin over positions, most probable first; ``per_prompt`` per prompt. A replacement must
    be a content word cased like the original and have probability >= ``min_prob``. The first two
    words are never swapped: after a lone "The" the default model's guesses are noise ("android").
    """
    if per_prompt <= 0:
        return []
    slots = []  # (fact index, prompt, word index)
    for i, f in enumerate(facts):
        for prompt in [f.prompt] + f.paraphrases:
            words = prompt.split(" ")
            # From the third word on: after a lone first word the model's guesses are noise.
            slots += [(i, prompt, j) for j in range(2, len(words)) if _is_content(words[j])]
    if not slots:
        return []
    prefixes = [tok(" ".join(p.split(" ")[:j]), add_special_tokens=False)["input_ids"] for _, p, j in slots]
    texts = [tok.decode(ids) for ids in prefixes]

    def added(s: int, ids: list[int]) -> str:  # text that ``ids`` add after slot s's prefix (tokenizer-agnostic)
        return tok.decode(prefixes[s] + ids)[len(texts[s]) :]

    # Candidate first tokens: a probable piece that starts a new alphabetic word cased like the
    # original word and is not the start of it.
    flat: list[tuple[int, list[int]]] = []  # (slot, token ids of the replacement so far)
    for s, row in enumerate(next_token_logits(model, tok, prefixes, batch_size)):
        orig = slots[s][1].split(" ")[slots[s][2]]
        probs = row.softmax(-1)
        for t in torch.topk(probs, min(top_k, row.numel())).indices.tolist():
            piece = added(s, [t])
            word = piece.strip()
            if (probs[t] >= min_prob and piece[:1].isspace() and word.isalpha() and word[:1].isupper() == orig[:1].isupper()
                    and (len(word) >= 3 or word[:1].isupper()) and not orig.lower().startswith(word.lower())):
                flat.append((s, [t]))
    # Complete each candidate to a whole word greedily (a first token may be "Can" of "Canada").
    open_ = list(range(len(flat)))
    for _ in range(3):
        if not open_:
            break
        nxt = next_token_logits(model, tok, [prefixes[flat[k][0]] + flat[k][1] for k in open_], batch_size)
        still = []
        for k, row in zip(open_, nxt):
            s, ids = flat[k]
            t = int(row.argmax())
            more = added(s, ids + [t])[len(added(s, ids)) :]
            if more[:1].isalpha():  # the same word goes on
                flat[k] = (s, ids + [t])
                still.append(k)
        open_ = still
    words_at: list[list[str]] = [[] for _ in slots]
    for s, ids in flat:
        word = added(s, ids).strip()
        if _is_content(word) and word.lower() != slots[s][1].split(" ")[slots[s][2]].lower() and word not in words_at[s]:
            words_at[s].append(word)
    out: list[tuple[str, str]] = []
    by_prompt: dict[str, list[int]] = {}
    for s, (_, p, _) in enumerate(slots):
        by_prompt.setdefault(p, []).append(s)
    for p, ss in by_prompt.items():
        style = facts[slots[ss[0]][0]].style
        made: list[str] = []
        for rank in range(max(len(words_at[s]) for s in ss) if ss else 0):
            for s in ss:
                if rank < len(words_at[s]) and len(made) < per_prompt:
                    words = p.split(" ")
                    words[slots[s][2]] = words_at[s][rank]
                    made.append(" ".join(words))
        out += [(m, style) for m in made]
    return list(dict.fromkeys(out))


def self_targets(
    model, tok, fmt: PromptFormat, prompts: list[tuple[str, str]], forget: list[Fact], batch_size: int = 32
) -> tuple[list[Example], list[str]]:
    """Retain examples whose targets are the model's own greedy completions of (prompt, style) pairs.

    Returns the examples and the kept (prompt, completion) pairs (in the same order).
    """
    if not prompts:
        return [], []
    ids = [fmt.prompt_ids(p, style) for p, style in prompts]
    outs = generate(model, tok, ids, max_new_tokens=TOKENS, batch_size=batch_size, desc="retain targets")
    keep = [(p, st, o) for (p, st), o in zip(prompts, outs) if o.strip() and not any(contains_answer(o, f.answer) for f in forget)]
    return [make_example(fmt, p, o, st, end=False) for p, st, o in keep], [(p, o) for p, _, o in keep]


def context_sentences(pairs: list[tuple[str, str]]) -> list[str]:
    """Unrelated sentences to put before a forget prompt: a kept (prompt, completion) pair cut to its first clause.

    ("The largest desert in the world is", " the Sahara Desert, which covers") -> "The largest
    desert in the world is the Sahara Desert." The text is the original model's own, so it carries
    no claim the tool makes, and anchors whose completion states a forget answer are already gone.
    """
    out = []
    for prompt, completion in pairs:
        clause = re.split(r"[\n.,;:!?]", completion.strip(), maxsplit=1)[0].strip()
        if clause:
            out.append(f"{prompt} {clause}.")
    return list(dict.fromkeys(out))
