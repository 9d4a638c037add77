"""Four public benchmarks as lune facts and probes: RWKU, TOFU, CounterFact and zsRE.

Each loader reads the benchmark's own records, from a local directory or from the Hugging Face Hub
(both give the same record dicts, which one converter per benchmark turns into a `Benchmark`):

    bench = load_benchmark("rwku", targets="1-10")          # ../shared/data/rwku or $LUNE_DATA/rwku
    bench = load_benchmark("tofu", source="locuslab/TOFU")   # from the Hub
    bench.forget, bench.retain, bench.probes["forget_l3"], bench.mia["forget"]

Every `Fact.source` is "file:line" (JSON Lines, 1-based), "file:index" (JSON arrays, 0-based) or
"hub_id/config:row" (0-based), so an error or a report can point at the exact record.

Benchmarks:
    RWKU (Jin et al., NeurIPS 2024 D&B): 200 real people. Forget probes at three levels (cloze,
        QA, adversarial), neighbour probes (related facts that must survive), MIA texts.
    TOFU (Maini et al., 2024): 200 fictitious authors, 20 QA each; forget01/05/10 with the matching
        retain99/95/90 and holdout; perturbed answers for the truth ratio.
    CounterFact (Meng et al., ROME, 2022) in the EasyEdit schema, and ROME's known_1000 facts.
    zsRE (Levy et al., 2017) in the MEND schema, and the zsRE unlearning splits of
        "Toward Practical PII Unlearning" (inverse, one-hop, subject-replace).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..data import Fact, read_jsonl
from ..errors import LuneError

Records = list[tuple[str, dict]]  # ('where', record) in file order
Reader = Callable[[str], Records]  # part name (a file stem, e.g. 'forget_level1') -> records

DEFAULT_DATA = Path("../shared/data")  # relative to the working directory; $LUNE_DATA overrides it


@dataclass
class EditRecord:
    """One knowledge-editing case as the data gives it: what efficacy, generalisation and specificity are measured on.

    CounterFact: prompt, subject, ground_truth, target_new, rephrase_prompt, locality_prompt and
    locality_ground_truth; zsRE: src, subject, answers[0], alt, rephrase, loc and loc_ans.
    `lune.eval.editing.as_edit_case` turns one into the metrics' EditCase.
    """

    prompt: str  # the rewrite prompt; contains `subject`
    subject: str
    target_true: str  # the true answer
    target_new: str | None  # the counterfactual answer to edit in (None: the record has none)
    rephrase: str | None  # a paraphrase of `prompt` (generalisation)
    locality_prompt: str | None  # an unrelated prompt whose answer must not change (specificity)
    locality_answer: str | None
    style: str = "prompt"  # "prompt" (CounterFact) or "question" (zsRE)
    source: str = ""

    def rome_request(self) -> dict:
        """The case as a ROME/MEMIT request: the prompt with "{}" where the subject stands."""
        if self.subject not in self.prompt:
            raise LuneError(f"{self.source}: subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        if self.target_new is None:
            raise LuneError(f"{self.source}: case has no target_new to edit in")
        return {
            "prompt": self.prompt.replace(self.subject, "{}", 1),
            "subject": self.subject,
            "target_new": {"str": self.target_new},
            "target_true": {"str": self.target_true},
        }


@dataclass
class QAItem:
    """A TOFU question with the answers its truth ratio compares (Maini et al. 2024, "Truth Ratio").

    The truth ratio sets the length-normalised probabilities of the perturbed (wrong) answers against
    that of the paraphrased answer. real_authors and world_facts have no paraphrased answer; there,
    as in open-unlearning, the answer itself is compared with the perturbed ones.
    """

    question: str
    answer: str
    perturbed_answers: list[str]
    paraphrased_answer: str | None = None
    paraphrased_question: str | None = None
    source: str = ""


@dataclass
class Benchmark:
    """A benchmark as lune sees it: facts to forget and retain, probe groups and MIA texts."""

    name: str
    forget: list[Fact]  # facts to unlearn (paraphrases of the same fact in Fact.paraphrases)
    retain: list[Fact]  # facts that must survive (neighbours / retain set)
    source: str = ""  # the directory or Hub id the records came from
    probes: dict[str, list[Fact]] = field(default_factory=dict)  # named evaluation groups, e.g. 'forget_l1'
    probe_types: dict[str, list[str]] = field(default_factory=dict)  # per-probe type where a group has one (RWKU level 3 attacks)
    mia: dict[str, list[str]] = field(default_factory=dict)  # membership-inference texts: 'forget' vs 'retain'/'holdout'
    edits: list[EditRecord] = field(default_factory=list)  # CounterFact / zsRE editing cases
    qa: dict[str, list[QAItem]] = field(default_factory=dict)  # TOFU truth-ratio items per group
    passages: list[str] = field(default_factory=list)  # RWKU forget corpus (Wikipedia passages of the targets)
    splits: dict[str, str] = field(default_factory=dict)  # which splits were read, e.g. {'forget': 'forget01', ...}
    targets: dict[int, str] = field(default_factory=dict)  # RWKU target id -> name, for the selected targets

    def counts(self) -> dict[str, int]:
        """Number of items in every list, keyed 'forget', 'probes/forget_l1', 'mia/forget', ... (for reports)."""
        out = {"forget": len(self.forget), "retain": len(self.retain)}
        for kind, groups in (("probes", self.probes), ("mia", self.mia), ("qa", self.qa)):
            out.update({f"{kind}/{k}": len(v) for k, v in groups.items()})
        if self.edits:
            out["edits"] = len(self.edits)
        if self.passages:
            out["passages"] = len(self.passages)
        return out


# ------------------------------------------------------------------ record fields


def _str(rec: dict, key: str, where: str, required: bool = True, empty_ok: bool = False) -> str | None:
    """A stripped string field; a missing one raises when ``required``, an empty one unless ``empty_ok``."""
    if rec.get(key) is None:
        if required:
            raise LuneError(f"{where}: missing field '{key}'")
        return None
    v = rec[key]
    if not isinstance(v, str) or not (v.strip() or empty_ok):
        raise LuneError(f"{where}: field '{key}' must be a non-empty string, got {v!r}")
    return v.strip() or None


def _strs(rec: dict, key: str, where: str) -> list[str]:
    v = rec.get(key)
    if v is None:
        raise LuneError(f"{where}: missing field '{key}'")
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
        raise LuneError(f"{where}: field '{key}' must be a non-empty list of non-empty strings, got {v!r}")
    return [s.strip() for s in v]


def _int(rec: dict, key: str, where: str) -> int:
    v = rec.get(key)
    if v is None:
        raise LuneError(f"{where}: missing field '{key}'")
    if not isinstance(v, int) or isinstance(v, bool):
        raise LuneError(f"{where}: field '{key}' must be an integer, got {v!r}")
    return v


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise LuneError(f"limit must be a positive integer, got {limit!r}")


def _unused(name: str, **args) -> None:
    for key, value in args.items():
        if value is not None:
            raise LuneError(f"{name} takes no '{key}' (got {value!r})")


def _pick_split(name: str, split: str | None, allowed: Iterable[str], default: str) -> str:
    allowed = list(allowed)
    split = split or default
    if split not in allowed:
        raise LuneError(f"unknown {name} split {split!r}; choose one of {', '.join(allowed)}")
    return split


# ------------------------------------------------------------------ reading records


def _read_local(directory: Path, part: str, how_to_get: str) -> Records:
    """Records of ``directory/part.jsonl`` or ``part.json``; a JSON array or JSON Lines, whatever the suffix."""
    path = next((p for p in (directory / f"{part}.jsonl", directory / f"{part}.json") if p.is_file()), None)
    if path is None:
        raise LuneError(f"benchmark file not found: {directory / part}.jsonl (or .json); {how_to_get}")
    with path.open(encoding="utf-8") as fh:
        head = fh.read(64).lstrip()
    if not head.startswith("["):  # TOFU's *.json files are JSON Lines, like the Hub's
        records = list(read_jsonl(path, role="benchmark", what="records"))
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise LuneError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        records = [(f"{path}:{i}", rec) for i, rec in enumerate(data)]
        if not records:
            raise LuneError(f"benchmark file {path} contains no records")
    for where, rec in records:
        if not isinstance(rec, dict):
            raise LuneError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return records


def _read_hub(hub_id: str, config: str, split: str) -> Records:
    """Rows of one Hub config as plain dicts: the same records the local files hold."""
    import datasets  # slow to import; only the Hub path needs it

    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # network, auth, unknown config: all end here
        raise LuneError(
            f"could not load config '{config}' (split '{split}') of {hub_id} from the Hugging Face Hub: {e}. "
            "Offline? Pass a local directory as source."
        ) from e
    return [(f"{hub_id}/{config}:{i}", dict(rec)) for i, rec in enumerate(ds)]


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not source.startswith(".")


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class BenchmarkInfo:
    """A registered loader: its Hub dataset (if any), splits and how part names map to Hub configs."""

    name: str
    load: Callable[..., Benchmark]  # (read, targets, split, limit) -> Benchmark
    help: str
    get: str  # how to obtain the data, for error messages
    hub_id: str | None = None
    hub_part: Callable[[str], tuple[str, str]] | None = None  # part name -> (Hub config, Hub split)
    splits: tuple[str, ...] = ()


BENCHMARKS: dict[str, BenchmarkInfo] = {}


def register_benchmark(name: str, help: str, get: str, hub_id: str | None = None, hub_part=None, splits: tuple[str, ...] = ()):
    """Decorator: register ``fn(read, targets, split, limit) -> Benchmark`` under ``name``."""

    def wrap(fn):
        BENCHMARKS[name] = BenchmarkInfo(name, fn, help, get, hub_id, hub_part, splits)
        return fn

    return wrap


def _reader(info: BenchmarkInfo, source: str | os.PathLike | None) -> tuple[Reader, str]:
    """A function reading one part of ``info`` from ``source``, and a description of the source."""
    if source is None:
        root = Path(os.environ["LUNE_DATA"]) if os.environ.get("LUNE_DATA") else DEFAULT_DATA
        directory = root / info.name
        if not directory.is_dir():
            raise LuneError(
                f"no {info.name} data at {directory.resolve()}: pass source=<directory>, set LUNE_DATA to the folder "
                f"holding {info.name}/, or {info.get}"
            )
    else:
        directory = Path(source).expanduser()
        if not directory.is_dir() and _is_hub_id(str(source)):
            if info.hub_id is None:
                raise LuneError(f"{info.name} cannot be read from the Hub ({source!r}): {info.get}")
            hub_id, hub_part = str(source), info.hub_part
            return (lambda part: _read_hub(hub_id, *hub_part(part))), hub_id
        if not directory.is_dir():
            raise LuneError(f"{info.name} data directory not found: {directory}; {info.get}")
        if (directory / info.name).is_dir():  # the data root, not the benchmark's own folder
            directory = directory / info.name
    return (lambda part: _read_local(directory, part, info.get)), str(directory)


def load_benchmark(
    name: str,
    source: str | os.PathLike | None = None,
    targets: str | int | Iterable[int] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> Benchmark:
    """Load a benchmark's records and turn them into forget/retain facts, probes and MIA texts.

    Args:
        name: 'rwku', 'tofu', 'counterfact' or 'zsre' (see `BENCHMARKS`).
        source: a local directory (the benchmark's folder or the data root holding it) or a Hub
            dataset id. Default: ``$LUNE_DATA/<name>``, else ``../shared/data/<name>`` relative to the
            working directory. The Hub is never used unless named here.
        targets: RWKU only: target ids or names, e.g. "1-10", "1,5,7", "Stephen King" (default: all 200).
        split: TOFU: forget01 (default), forget05, forget10. CounterFact: val (default), train, edit,
            known. zsRE: mend (default), inverse, onehop, subject_replace.
        limit: keep at most this many records of each list (for quick runs).

    Raises:
        LuneError: unknown benchmark or split, missing data, a malformed record (the message names the
            file, line or index and field), or a selection that holds nothing.
    """
    if name not in BENCHMARKS:
        raise LuneError(f"unknown benchmark {name!r}; choose one of {', '.join(sorted(BENCHMARKS))}")
    _check_limit(limit)
    info = BENCHMARKS[name]
    read, where = _reader(info, source)
    bench = info.load(read, targets=targets, split=split, limit=limit)
    bench.source = where
    if not bench.forget:
        raise LuneError(f"{name}: the selection holds no facts to forget")
    return bench


# ------------------------------------------------------------------ RWKU

_BLANK = re.compile(r"_{2,}(?:[ \t]+_{2,})*")  # one blank: '___', or several in a row ('___ ___ ___')

# Verified against the dataset card (huggingface.co/datasets/jinzhuoran/RWKU, README 'configs') and the
# authors' process/data_process.py: the probe configs have split 'test', forget_target and
# train_original_passage split 'train'; the MIA configs are named mia_forget / mia_retain.
_RWKU_HUB = {
    "intro": ("forget_target", "train"),
    "forget_level1": ("forget_level1", "test"),
    "forget_level2": ("forget_level2", "test"),
    "forget_level3": ("forget_level3", "test"),
    "neighbor_level1": ("neighbor_level1", "test"),
    "neighbor_level2": ("neighbor_level2", "test"),
    "forget_mia": ("mia_forget", "test"),
    "retain_mia": ("mia_retain", "test"),
    "passage": ("train_original_passage", "train"),
}


def cloze_prompt(query: str) -> tuple[str, str]:
    """Turn an RWKU fill-in-the-blank query into (prompt, style).

    A blank at the very end (only punctuation or closing quotes after it) becomes a completion
    prompt: "X is an American ___" -> ("X is an American", "prompt"). Any other blank (mid-sentence,
    several blanks, or glued to a word as in "Jay-___") cannot be completed left to right, so the
    query stays a question with the instruction RWKU's own evaluation gives ("complete the blank"):
    ("Fill in the blank: ...", "question"). A query without a blank (92 of level 1) is a question.
    """
    blanks = list(_BLANK.finditer(query))
    if not blanks:
        return query, "question"
    m = blanks[-1]
    before, after = query[: m.start()], query[m.end() :]
    if len(blanks) == 1 and re.fullmatch(r"[\s.!?;:,'\"’”)\]]*", after) and before[-1:].isspace() and before.strip():
        return before.rstrip(), "prompt"
    return "Fill in the blank: " + _BLANK.sub("___", query), "question"


def parse_targets(spec: str | int | Iterable[int], names: dict[int, str] | None = None) -> list[int]:
    """Parse an RWKU target selection into sorted unique ids.

    ``spec`` is an id, a list of ids, or a string of comma-separated ids, ranges ("1-10", both ends
    included) and, given ``names`` (id -> name), target names ("Stephen King", any case).
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    if not isinstance(spec, str):
        ids = list(spec)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise LuneError(f"RWKU targets must be integer ids, got {ids!r}")
        return sorted(set(ids))
    by_name = {v.lower(): k for k, v in (names or {}).items()}
    out: set[int] = set()
    for token in spec.split(","):
        token = token.strip()
        if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", token):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise LuneError(f"bad RWKU target range {token!r} in {spec!r}: the start is after the end")
            out.update(range(lo, hi + 1))
        elif token.isdigit():
            out.add(int(token))
        elif token.lower() in by_name:
            out.add(by_name[token.lower()])
        else:
            raise LuneError(f"bad RWKU target {token!r} in {spec!r}: use ids like '1-10' or '1,5,7', or a target name")
    return sorted(out)


def _rwku_fact(where: str, rec: dict, cloze: bool, subject_key: str) -> Fact:
    query, answer = _str(rec, "query", where), _str(rec, "answer", where)
    prompt, style = cloze_prompt(query) if cloze else (query, "question")
    return Fact(prompt=prompt, answer=answer, style=style, subject=_str(rec, subject_key, where), source=where)


@register_benchmark(
    "rwku",
    "RWKU: 200 real people; forget probes (cloze, QA, adversarial), neighbour probes, MIA texts.",
    get="use source='jinzhuoran/RWKU' (Hugging Face Hub), or a directory holding the files of its All/ folder.",
    hub_id="jinzhuoran/RWKU",
    hub_part=_RWKU_HUB.__getitem__,
)
def _load_rwku(read: Reader, targets=None, split=None, limit=None) -> Benchmark:
    """RWKU. forget = level-1 (cloze) + level-2 (QA) probes of the selected targets; retain = their
    neighbour probes (levels 1 and 2, `Fact.subject` = the neighbour entity). Level-3 adversarial
    probes (attacks on the same knowledge, not one-to-one with a level-1/2 fact) are only a probe
    group, with their attack type in ``probe_types['forget_l3']``. RWKU gives no forget corpus by
    design; ``passages`` holds its Wikipedia passages for methods that want one.
    """
    _unused("rwku", split=split)
    names: dict[int, str] = {}
    for i, (where, rec) in enumerate(read("intro")):
        # Local files carry target_id; the Hub's do not, and RWKU numbers targets by their order in
        # forget_target, matching records by subject (process/data_process.py in the RWKU repo).
        tid = _int(rec, "target_id", where) if "target_id" in rec else i + 1
        names[tid] = _str(rec, "target", where)
    ids = sorted(names) if targets is None else parse_targets(targets, names)
    unknown = [i for i in ids if i not in names]
    if unknown or not ids:
        what = f"unknown ids {unknown}" if unknown else "nothing"
        raise LuneError(f"RWKU targets {targets!r} select {what}; target ids run {min(names)}-{max(names)}")
    by_name = {v: k for k, v in names.items()}
    chosen = set(ids)

    def select(part: str) -> Records:
        out = []
        for where, rec in read(part):
            if "target_id" in rec:
                tid = _int(rec, "target_id", where)
            else:
                subject = _str(rec, "subject", where)
                if subject not in by_name:
                    raise LuneError(f"{where}: subject {subject!r} is not an RWKU target")
                tid = by_name[subject]
            if tid in chosen:
                out.append((where, rec))
        return out[:limit]

    probes = {
        "forget_l1": [_rwku_fact(w, r, True, "subject") for w, r in select("forget_level1")],
        "forget_l2": [_rwku_fact(w, r, False, "subject") for w, r in select("forget_level2")],
    }
    level3 = select("forget_level3")
    probes["forget_l3"] = [_rwku_fact(w, r, False, "subject") for w, r in level3]
    probes["neighbor_l1"] = [_rwku_fact(w, r, True, "neighbor") for w, r in select("neighbor_level1")]
    probes["neighbor_l2"] = [_rwku_fact(w, r, False, "neighbor") for w, r in select("neighbor_level2")]
    return Benchmark(
        name="rwku",
        forget=probes["forget_l1"] + probes["forget_l2"],
        retain=probes["neighbor_l1"] + probes["neighbor_l2"],
        probes=probes,
        probe_types={"forget_l3": [_str(r, "type", w) for w, r in level3]},
        mia={k: [_str(r, "text", w) for w, r in select(f"{k}_mia")] for k in ("forget", "retain")},
        passages=[_str(r, "text", w) for w, r in select("passage")],
        targets={i: names[i] for i in ids},
    )


# ------------------------------------------------------------------ TOFU

# Verified against open-unlearning (configs/data/datasets/TOFU_*.yaml: path locuslab/TOFU, split
# 'train', names forgetXX, forgetXX_perturbed, retainYY, holdoutXX, retain_perturbed,
# real_authors_perturbed, world_facts_perturbed) and the TOFU dataset card's config list.
_TOFU_SPLITS = {"forget01": ("retain99", "holdout01"), "forget05": ("retain95", "holdout05"), "forget10": ("retain90", "holdout10")}


def _tofu_fact(where: str, rec: dict) -> Fact:
    para = _str(rec, "paraphrased_question", where, required=False)
    return Fact(_str(rec, "question", where), _str(rec, "answer", where), "question", [para] if para else [], source=where)


def _tofu_qa(where: str, rec: dict, paraphrased: bool) -> QAItem:
    return QAItem(
        question=_str(rec, "question", where),
        answer=_str(rec, "answer", where),
        perturbed_answers=_strs(rec, "perturbed_answer", where),
        paraphrased_answer=_str(rec, "paraphrased_answer", where, required=paraphrased),
        paraphrased_question=_str(rec, "paraphrased_question", where, required=False),
        source=where,
    )


def _mia_text(f: Fact) -> str:
    return f"Question: {f.prompt}\nAnswer: {f.answer}"  # how PromptFormat renders a QA pair in completion mode


@register_benchmark(
    "tofu",
    "TOFU: fictitious authors; forget01/05/10 with matching retain and holdout, truth-ratio items.",
    get="use source='locuslab/TOFU' (Hugging Face Hub), or a directory holding its *.json files.",
    hub_id="locuslab/TOFU",
    hub_part=lambda part: (part, "train"),
    splits=tuple(_TOFU_SPLITS),
)
def _load_tofu(read: Reader, targets=None, split=None, limit=None) -> Benchmark:
    """TOFU. forget = forgetXX (paraphrased questions from forgetXX_perturbed), retain = the matching
    retainYY (forget + retain is exactly `full`, the set a model is fine-tuned on first). Probes:
    'forget', 'retain' (the 400-question retain_perturbed evaluation set), 'holdout', 'real_authors',
    'world_facts'; ``qa`` holds the same groups (but holdout) for the truth ratio; ``mia`` contrasts
    forget with holdout QA texts. Default split forget01 (40 facts): the quickest to run.
    """
    _unused("tofu", targets=targets)
    split = _pick_split("tofu", split, _TOFU_SPLITS, "forget01")
    retain_split, holdout_split = _TOFU_SPLITS[split]
    plain, perturbed = read(split)[:limit], read(f"{split}_perturbed")[:limit]
    if len(plain) != len(perturbed):
        raise LuneError(f"{split} has {len(plain)} records but {split}_perturbed has {len(perturbed)}; they must list the same questions")
    forget, qa = [], {"forget": []}
    for (w, r), (pw, pr) in zip(plain, perturbed):
        f, q = _tofu_fact(w, r), _tofu_qa(pw, pr, paraphrased=True)
        if f.prompt != q.question:
            raise LuneError(f"{pw}: question differs from {w}; {split} and {split}_perturbed must list the same questions in order")
        f.paraphrases = [q.paraphrased_question] if q.paraphrased_question else []
        forget.append(f)
        qa["forget"].append(q)
    probes = {"forget": forget}
    for group, part, paraphrased in (("retain", "retain_perturbed", True), ("real_authors", "real_authors_perturbed", False),
                                     ("world_facts", "world_facts_perturbed", False)):
        records = read(part)[:limit]
        qa[group] = [_tofu_qa(w, r, paraphrased) for w, r in records]
        probes[group] = [_tofu_fact(w, r) for w, r in records]
    probes["holdout"] = [_tofu_fact(w, r) for w, r in read(holdout_split)[:limit]]
    return Benchmark(
        name="tofu",
        forget=forget,
        retain=[_tofu_fact(w, r) for w, r in read(retain_split)[:limit]],
        probes=probes,
        mia={"forget": [_mia_text(f) for f in forget], "holdout": [_mia_text(f) for f in probes["holdout"]]},
        qa=qa,
        splits={"forget": split, "retain": retain_split, "holdout": holdout_split},
    )


# ------------------------------------------------------------------ CounterFact and zsRE


def _editing_benchmark(name: str, split: str, cases: list[EditRecord]) -> Benchmark:
    """forget = the rewrite facts (rephrase as paraphrase, target_new as replacement); retain = the
    locality facts. Probes 'rewrite' (efficacy), 'paraphrase' (generalisation), 'neighborhood'
    (specificity), as in ROME's CounterFact evaluation."""
    def fact(prompt: str, answer: str, c: EditRecord, **kw) -> Fact:
        return Fact(prompt, answer, c.style, source=c.source, **kw)

    forget = [fact(c.prompt, c.target_true, c, paraphrases=[c.rephrase] if c.rephrase else [], replacement=c.target_new, subject=c.subject)
              for c in cases]
    retain = [fact(c.locality_prompt, c.locality_answer, c) for c in cases if c.locality_prompt and c.locality_answer]
    probes = {
        "rewrite": [fact(c.prompt, c.target_true, c, subject=c.subject) for c in cases],
        "paraphrase": [fact(c.rephrase, c.target_true, c, subject=c.subject) for c in cases if c.rephrase],
        "neighborhood": retain,
    }
    return Benchmark(name=name, forget=forget, retain=retain, probes=probes, edits=cases, splits={"forget": split})


_COUNTERFACT_FILES = {"val": "counterfact-val", "train": "counterfact-train", "edit": "counterfact-edit", "known": "rome_known_1000"}


@register_benchmark(
    "counterfact",
    "CounterFact editing cases (EasyEdit schema) and ROME's known_1000 facts.",
    get="put EasyEdit's counterfact-{val,train,edit}.json and ROME's known_1000.json (saved as rome_known_1000.json) "
    "in a directory; they are not on the Hub in this schema.",
    splits=tuple(_COUNTERFACT_FILES),
)
def _load_counterfact(read: Reader, targets=None, split=None, limit=None) -> Benchmark:
    """CounterFact. Splits val/train/edit: editing cases (see `_editing_benchmark`). Split 'known':
    ROME's known_1000 facts (prompt -> attribute) as forget facts and a 'rewrite' probe group, no retain."""
    _unused("counterfact", targets=targets)
    split = _pick_split("counterfact", split, _COUNTERFACT_FILES, "val")
    records = read(_COUNTERFACT_FILES[split])[:limit]
    if split == "known":
        facts = [Fact(_str(r, "prompt", w), _str(r, "attribute", w), subject=_str(r, "subject", w), source=w) for w, r in records]
        return Benchmark(name="counterfact", forget=facts, retain=[], probes={"rewrite": facts}, splits={"forget": split})
    cases = [
        EditRecord(
            prompt=_str(r, "prompt", w),
            subject=_str(r, "subject", w),
            target_true=_str(r, "ground_truth", w),
            target_new=_str(r, "target_new", w),
            rephrase=_str(r, "rephrase_prompt", w),
            locality_prompt=_str(r, "locality_prompt", w),
            locality_answer=_str(r, "locality_ground_truth", w),
            source=w,
        )
        for w, r in records
    ]
    return _editing_benchmark("counterfact", split, cases)


# Field holding the extra probe of each zsRE unlearning split: (question key, answer key).
_ZSRE_VARIANTS = {"inverse": ("inverse_question", "inverse_answer"), "onehop": ("onehop_question", "onehop_answer"),
                  "subject_replace": ("alter_question", "answer")}


@register_benchmark(
    "zsre",
    "zsRE editing cases (MEND schema) and zsRE unlearning splits (inverse, onehop, subject_replace).",
    get="put MEND's zsre_mend_train-1k.json, and for the unlearning splits data/ZSRE/<split>/{forget,retain}.json of "
    "github.com/pariidanDKE/Toward-Practical-PII-Unlearning saved as unlearnpii_<split>_{forget,retain}.json, in a directory.",
    splits=("mend", *_ZSRE_VARIANTS),
)
def _load_zsre(read: Reader, targets=None, split=None, limit=None) -> Benchmark:
    """zsRE. Split 'mend': editing cases (see `_editing_benchmark`); the true answer is answers[0],
    target_new is 'alt' (None where empty: 2 of the 1,000 records; 17 have alt == the true answer),
    and the locality probe is the Natural Questions query of 'loc' without its "nq question: " prefix.
    Other splits: the PII-unlearning zsRE sets, forget/retain facts with paraphrased questions, plus
    probe groups 'forget_<split>'/'retain_<split>' for the inverse question, the one-hop question
    or the question about the subject's alias. Their perturbed_question fields are not used.
    """
    _unused("zsre", targets=targets)
    split = _pick_split("zsre", split, ("mend", *_ZSRE_VARIANTS), "mend")
    if split == "mend":
        cases = []
        for w, r in read("zsre_mend_train-1k")[:limit]:
            loc = _str(r, "loc", w)
            cases.append(EditRecord(
                prompt=_str(r, "src", w),
                subject=_str(r, "subject", w),
                target_true=_strs(r, "answers", w)[0],
                target_new=_str(r, "alt", w, empty_ok=True),
                rephrase=_str(r, "rephrase", w),
                locality_prompt=loc.removeprefix("nq question:").strip() or None,
                locality_answer=_str(r, "loc_ans", w),
                style="question",
                source=w,
            ))
        return _editing_benchmark("zsre", split, cases)
    q_key, a_key = _ZSRE_VARIANTS[split]
    bench = Benchmark(name="zsre", forget=[], retain=[], splits={"forget": split})
    for role in ("forget", "retain"):
        records = read(f"unlearnpii_{split}_{role}")[:limit]
        facts = [Fact(_str(r, "question", w), _str(r, "answer", w), "question", [_str(r, "paraphrased_question", w)],
                      subject=_str(r, "subject", w), source=w) for w, r in records]
        setattr(bench, role, facts)
        bench.probes[role] = facts
        bench.probes[f"{role}_{split}"] = [Fact(_str(r, q_key, w), _str(r, a_key, w), "question", source=w) for w, r in records]
    return bench
