"""Forget/retain fact files and the one place where prompts are rendered and tokenised.

A fact file is JSON Lines, one fact per line::

    {"prompt": "The capital of France is", "answer": "Paris", "paraphrases": ["France's capital city is"]}
    {"question": "What is the capital of France?", "answer": "Paris", "replacement": "Lyon"}

``paraphrases`` (more prompts for the same fact) and ``replacement`` (the answer wanted instead)
are optional; ``subject`` is kept for editing methods.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from .errors import LuneError

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


@dataclass
class Fact:
    """One fact: a prompt (or question) and the answer the model gives to it."""

    prompt: str
    answer: str
    style: str = "prompt"  # "prompt" (completion) or "question" (QA)
    paraphrases: list[str] = field(default_factory=list)
    replacement: str | None = None
    subject: str | None = None
    source: str = ""  # "file:line", for error messages and reports

    def to_record(self) -> dict:
        rec: dict = {self.style: self.prompt, "answer": self.answer}
        if self.paraphrases:
            rec["paraphrases"] = self.paraphrases
        if self.replacement:
            rec["replacement"] = self.replacement
        if self.subject:
            rec["subject"] = self.subject
        return rec


def _str_field(rec: dict, name: str, where: str, required: bool) -> str | None:
    if name not in rec or rec[name] is None:
        if required:
            raise LuneError(f"{where}: missing field '{name}'")
        return None
    v = rec[name]
    if not isinstance(v, str) or not v.strip():
        raise LuneError(f"{where}: field '{name}' must be a non-empty string, got {v!r}")
    return v.strip()


def fact_from_record(rec: object, where: str) -> Fact:
    """Validate one parsed record; ``where`` ('file:line') prefixes every error."""
    if not isinstance(rec, dict):
        raise LuneError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "prompt" in rec and "question" in rec:
        raise LuneError(f"{where}: give either 'prompt' or 'question', not both")
    style = "question" if "question" in rec else "prompt"
    prompt = _str_field(rec, style, where, required=True)
    answer = _str_field(rec, "answer", where, required=True)
    paraphrases = rec.get("paraphrases", []) or []
    if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise LuneError(f"{where}: field 'paraphrases' must be a list of non-empty strings")
    return Fact(
        prompt=prompt,
        answer=answer,
        style=style,
        paraphrases=[p.strip() for p in paraphrases],
        replacement=_str_field(rec, "replacement", where, required=False),
        subject=_str_field(rec, "subject", where, required=False),
        source=where,
    )


def read_jsonl(path: str | Path, role: str, what: str):
    """Yield ('file:line', record) for each non-blank line of a JSON Lines file.

    Raises LuneError naming the file (and line) when it is missing, malformed or holds no records.
    """
    p = Path(path)
    if not p.is_file():
        raise LuneError(f"{role} file not found: {p}")
    empty = True
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LuneError(f"{p}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            empty = False
            yield f"{p}:{n}", rec
    if empty:
        raise LuneError(f"{role} file {p} contains no {what}")


def read_facts(path: str | Path, role: str = "forget") -> list[Fact]:
    """Read and validate a JSON Lines fact file; errors name the file, line and field."""
    return [fact_from_record(rec, where) for where, rec in read_jsonl(path, role, "facts")]


def normalize(text: str) -> str:
    """Lower-case, strip accents and punctuation, collapse whitespace (for answer matching)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = "".join(c if c.isalnum() else " " for c in text.lower())
    return " ".join(text.split())


def contains_answer(text: str, answer: str) -> bool:
    """Does ``text`` state ``answer`` (normalised, whole-word substring match)?"""
    a = normalize(answer)
    return bool(a) and f" {a} " in f" {normalize(text)} "


class PromptFormat:
    """Renders a fact's prompt and a response as token ids: plain completion or the chat template.

    ``mode`` is 'completion', 'chat' or 'auto' (questions go through the chat template when the
    tokenizer has one; prompts are completed as plain text).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mode: str = "auto"):
        self.tok = tokenizer
        self.mode = mode
        self.has_chat = bool(getattr(tokenizer, "chat_template", None))
        if mode == "chat" and not self.has_chat:
            raise LuneError("format 'chat' requested but the tokenizer has no chat template; use --format completion")

    def is_chat(self, style: str) -> bool:
        if self.mode == "auto":
            return style == "question" and self.has_chat
        return self.mode == "chat"

    def prompt_text(self, text: str, style: str) -> str:
        if self.is_chat(style):
            return self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        if style == "question":
            return f"Question: {text}\nAnswer:"
        return text

    def prompt_ids(self, text: str, style: str) -> list[int]:
        rendered = self.prompt_text(text, style)
        # A chat template already contains its special tokens.
        return self.tok(rendered, add_special_tokens=not self.is_chat(style))["input_ids"]

    def response_ids(self, response: str, style: str, end: bool = True, stop: bool = False) -> list[int]:
        """Token ids of a response; completion responses get a leading space, chat ones an end-of-turn (if ``end``).

        ``stop``: a completion response also ends with the end-of-text token (the text stops there).
        """
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        if self.is_chat(style):
            return self.tok(response.strip(), add_special_tokens=False)["input_ids"] + (eos if end else [])
        return self.tok(" " + response.strip(), add_special_tokens=False)["input_ids"] + (eos if stop else [])


@dataclass
class Example:
    """A tokenised (prompt, response) pair; the loss covers the response only (paper Eq. 4)."""

    input_ids: list[int]
    labels: list[int]
    fact: int = -1  # index of the fact it came from
    ref_logp: float | None = None  # the original model's summed log p(response | prompt), for reference-based losses


def make_example(
    fmt: PromptFormat, prompt: str, response: str, style: str, fact: int = -1, max_length: int = 512, end: bool = True,
    stop: bool = False,
) -> Example:
    """Tokenise one (prompt, response) pair with the loss mask on the response; ``end`` appends end-of-turn in chat,
    ``stop`` end-of-text after a completion."""
    p = fmt.prompt_ids(prompt, style)
    r = fmt.response_ids(response, style, end=end, stop=stop)
    if not r:
        raise LuneError(f"empty response for prompt {prompt!r}")
    p = p[-max(1, max_length - len(r)) :]  # keep the end of an over-long prompt
    return Example(input_ids=p + r, labels=[IGNORE] * len(p) + r, fact=fact)


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-pad a list of examples into tensors: input_ids, attention_mask, labels (B, T), and
    ``ref_logp`` (B,) when every example carries one."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if all(e.ref_logp is not None for e in examples):
        batch["ref_logp"] = torch.tensor([e.ref_logp for e in examples], dtype=torch.float32)
    return batch
