"""Error bars: paired differences over the same items, perplexity intervals over windows, the within-noise mark."""

import json
import math

import pytest
from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

from come.cli import main
from come.compare import CompareConfig, compare, paired_section
from come.config import CalibConfig
from come.eval import harness, report, stats

T_975_DF3 = 3.182446305284263  # Student's t, 0.975 quantile, 3 degrees of freedom (tables)


def items(acc: str, acc_norm: str | None = None, ids: str | None = None) -> dict:
    out = {"doc_ids": ids or f"0-{len(acc) - 1}", "hash": "h", "acc": acc}
    if acc_norm is not None:
        out["acc_norm"] = acc_norm
    return out


def test_paired_accuracy_se_of_known_vectors():
    # d = model - base = 0, 1, 0, 1, -1, 0: mean 1/6; sum of squared deviations 102/36, / (n - 1) / n = 17/180
    d = stats.paired_accuracy(items("110101"), items("100011"), "acc")
    assert d["diff"] == pytest.approx(1 / 6) and d["n"] == 6
    assert d["se"] == pytest.approx(math.sqrt(17 / 180))
    assert d["within_noise"] is True  # 0.167 <= 2 x 0.307


def test_paired_accuracy_clear_difference_and_identical_models():
    d = stats.paired_accuracy(items("1" * 50), items("0" * 40 + "1" * 10), "acc")
    # d: forty 1s and ten 0s: mean 0.8, sample variance 0.8 * 0.2 * 50 / 49
    assert d["diff"] == pytest.approx(0.8) and d["se"] == pytest.approx(math.sqrt(0.16 * 50 / 49 / 50))
    assert d["within_noise"] is False
    same = stats.paired_accuracy(items("0110"), items("0110"), "acc")
    assert same["diff"] == 0 and same["se"] == 0 and same["within_noise"] is True


def test_paired_accuracy_refuses_different_items():
    assert "unavailable" in stats.paired_accuracy(items("01", ids="0-1"), items("01", ids="2-3"), "acc")
    other = dict(items("01"), hash="other")
    assert "unavailable" in stats.paired_accuracy(items("01"), other, "acc")


def test_average_difference_combines_task_ses_in_quadrature():
    a = {"diff": 0.10, "se": 0.03, "n": 100}
    b = {"diff": -0.02, "se": 0.04, "n": 50}
    avg = stats.average_difference([a, b])
    assert avg["diff"] == pytest.approx(0.04) and avg["se"] == pytest.approx(0.05 / 2) and avg["n"] == 150
    assert avg["within_noise"] is True  # 0.04 <= 2 x 0.025
    assert "unavailable" in stats.average_difference([a, {"unavailable": "x"}])


def test_ppl_interval_of_known_window_nlls():
    # mean 2.3, sample sd sqrt(0.2 / 3), SE sd / 2; 95% t with 3 degrees of freedom
    iv = stats.ppl_interval([2.0, 2.2, 2.4, 2.6])
    half = T_975_DF3 * math.sqrt(0.2 / 3) / 2
    assert iv["windows"] == 4 and iv["nll"] == pytest.approx(2.3)
    assert iv["ppl_lo"] == pytest.approx(math.exp(2.3 - half)) and iv["ppl_hi"] == pytest.approx(math.exp(2.3 + half))
    assert stats.ppl_interval([2.0])["ppl_lo"] is None  # one window: no interval


def test_paired_ppl_ratio_and_interval():
    base = [2.0, 2.2, 2.4, 2.6]
    shifted = stats.paired_ppl([x + 0.1 for x in base], base)  # every window 0.1 nats worse: no noise at all
    assert shifted["ratio"] == pytest.approx(math.exp(0.1)) and shifted["within_noise"] is False
    assert shifted["ratio_lo"] == pytest.approx(math.exp(0.1)) == shifted["ratio_hi"]
    # d = 0.3, -0.1, 0.2, 0.0: mean 0.1, sample sd sqrt(0.1 / 3)
    mixed = stats.paired_ppl([2.3, 2.1, 2.6, 2.6], base)
    half = T_975_DF3 * math.sqrt(0.1 / 3) / 2
    assert mixed["nll_diff"] == pytest.approx(0.1) and mixed["ratio"] == pytest.approx(math.exp(0.1))
    assert mixed["ratio_lo"] == pytest.approx(math.exp(0.1 - half)) and mixed["ratio_hi"] == pytest.approx(
        math.exp(0.1 + half))
    assert mixed["within_noise"] is True  # 0.1 < 3.18 x 0.091
    assert "unavailable" in stats.paired_ppl([2.0, 2.1], base)


def test_item_record_is_compact_and_ordered_by_doc_id():
    samples = [{"doc_id": i, "doc_hash": f"h{i}", "acc": float(i % 2), "acc_norm": 1.0} for i in (5, 0, 1, 2, 7)]
    rec = harness.items(samples)
    assert rec["doc_ids"] == "0-2,5,7" and rec["acc"] == "01011" and rec["acc_norm"] == "11111"
    assert rec["hash"] != harness.items(samples[:-1])["hash"]


# --- tables --------------------------------------------------------------------------------------------------


def fake_model(name: str, boolq: str, piqa: str, window_nll: list[float]) -> dict:
    tasks = {}
    for task, acc in (("boolq", boolq), ("piqa", piqa)):
        tasks[task] = {"acc": acc.count("1") / len(acc), "metric": harness.metric_for(task), "items": items(acc)}
    nll = sum(window_nll) / len(window_nll)
    ppl = {"ppl": math.exp(nll), "window_nll": window_nll, "interval": stats.ppl_interval(window_nll)}
    return {"name": name, "ppl": {"text": ppl}, "tasks": tasks, "averages": report.averages(tasks)}


def eval_result() -> dict:
    # boolq: 40 items the pruned model gets wrong that the dense one got right: clear; piqa: one item of 40
    dense = fake_model("dense", "1" * 40, "0110" * 10, [2.0, 2.2, 2.4, 2.6])
    pruned = fake_model("pruned", "0" * 40, "1110" + "0110" * 9, [2.3, 2.1, 2.6, 2.6])
    return {"model": pruned, "baseline": dense, "retained": report.retained(pruned, dense),
            "differences": report.differences(pruned, dense)}


def test_eval_table_marks_within_noise_and_not_a_clear_difference():
    text = report.table(eval_result())
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "diff (paired)" in rows["metric"]
    assert rows["boolq/acc"].endswith("| -100.00 ± 0.00 |")  # clear: no mark
    assert rows["piqa/acc"].endswith(f"| +2.50 ± 2.50 {stats.MARK} |")  # one item of 40: within noise
    assert f"{stats.MARK} |" in rows["ppl/text"] and "x1.105 [" in rows["ppl/text"]
    lo, hi = stats.ppl_interval([2.0, 2.2, 2.4, 2.6])["ppl_lo"], stats.ppl_interval([2.0, 2.2, 2.4, 2.6])["ppl_hi"]
    assert f"[{lo:.2f}, {hi:.2f}]" in rows["ppl/text"]  # the dense perplexity's interval over windows
    assert not rows["avg/acc"].endswith(f"{stats.MARK} |")
    assert stats.LEGEND in text


def test_table_without_per_item_results_has_no_diff_column():
    res = eval_result()
    for r in (res["model"], res["baseline"]):
        for t in r["tasks"].values():
            del t["items"]
        del r["ppl"]["text"]["window_nll"]
    res["differences"] = report.differences(res["model"], res["baseline"])
    assert all("unavailable" in d for d in res["differences"].values())
    assert "diff (paired)" not in report.table(res)


def test_compare_paired_section_marks_within_noise():
    res = eval_result()
    rows = [{"method": m, "ppl": dict(r["ppl"]["text"], source="text"), "tasks": r["tasks"]}
            for m, r in (("dense", res["baseline"]), ("come", res["model"]))]
    from come.compare import _add_paired

    _add_paired(rows)
    lines = paired_section({"rows": rows})
    come = next(line for line in lines if line.startswith("| come |"))
    cells = [c.strip() for c in come.strip("|").split("|")]
    assert cells[3] == "-100.00 ± 0.00" and cells[4] == f"+2.50 ± 2.50 {stats.MARK}"
    assert stats.LEGEND in lines


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.fixture
def two_models(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"tiny{seed}"
        tiny_model("llama", seed=seed).save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
        paths.append(path)
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT * 20)
    return paths, text


def test_eval_with_baseline_records_paired_differences(two_models, tmp_path, capsys):
    (model, base), text = two_models
    out = tmp_path / "eval"
    assert main(["eval", str(model), "--baseline", str(base), "--ppl", str(text), "--ppl-seq-len", "32",
                 "--ppl-max-windows", "6", "--tasks", "piqa", "--limit", "6", "--device", "cpu",
                 "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    m, b = res["model"], res["baseline"]
    mi, bi = m["tasks"]["piqa"]["items"], b["tasks"]["piqa"]["items"]
    assert mi["doc_ids"] == "0-5" == bi["doc_ids"] and mi["hash"] == bi["hash"] and len(mi["acc"]) == 6
    d = res["differences"]["piqa/acc_norm"]
    per_item = [int(x) - int(y) for x, y in zip(mi["acc_norm"], bi["acc_norm"])]
    assert d["n"] == 6 and d["diff"] == pytest.approx(m["tasks"]["piqa"]["acc_norm"] - b["tasks"]["piqa"]["acc_norm"])
    assert d["diff"] == pytest.approx(sum(per_item) / 6)
    p = res["differences"][f"ppl/{text}"]
    assert p["windows"] == 6 and p["ratio"] == pytest.approx(m["ppl"][str(text)]["ppl"] / b["ppl"][str(text)]["ppl"])
    assert p["ratio_lo"] <= p["ratio"] <= p["ratio_hi"]
    iv = m["ppl"][str(text)]["interval"]
    assert iv["windows"] == 6 and iv["ppl_lo"] < m["ppl"][str(text)]["ppl"] < iv["ppl_hi"]
    assert res["settings"]["statistics"]["noise_se"] == stats.NOISE_SE
    assert res["settings"]["lm_eval_seeds"]["random_seed"] == 0
    assert stats.LEGEND in (out / "eval.md").read_text() and "diff (paired)" in capsys.readouterr().out


def test_compare_rows_carry_intervals_and_paired_differences(tiny_dir, tmp_path):
    path, calib_text = tiny_dir
    text = tmp_path / "eval.txt"  # perplexity on other text than the calibration (compare refuses the same file)
    text.write_text(SAMPLE_TEXT[::-1] * 20)
    calib = CalibConfig(data=str(calib_text), samples=4, seq_len=32, batch_size=2)
    res = compare(CompareConfig(model=str(path), methods="shortgpt", target_layers=4, evals="ppl",
                                ppl_data=str(text), ppl_seq_len=32, ppl_max_windows=5, calib=calib, device="cpu",
                                progress=False, out=str(tmp_path / "cmp"), save_models=False))
    dense, pruned = res["rows"]
    assert dense["ppl"]["interval"]["windows"] == 5
    d = pruned["paired"][f"ppl/{text}"]
    assert d["ratio"] == pytest.approx(pruned["ppl"]["ppl"] / dense["ppl"]["ppl"])
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Paired differences to dense" in md and stats.LEGEND in md
    assert res["settings"]["statistics"]["level"] == 0.95
