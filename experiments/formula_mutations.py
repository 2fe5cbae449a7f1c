"""Show that each formula test fails on a deliberately wrong variant of its formula.

For every mutation below, a fresh copy of the committed source (`git archive REF src`) gets one wrong edit, and the
matching test of tests/test_formulas.py (taken from the working tree) runs against that copy. The repository itself
is never edited. Prints a markdown table: mutation, test, result ("FAILED as expected", or "passed = test too weak").

    OMP_NUM_THREADS=1 .venv/bin/python experiments/formula_mutations.py [--ref HEAD] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/test_formulas.py"

# (name, file under src/come, exact text, wrong text, test names); a text may be a tuple of alternatives (the
# source as it was, as it is now), with the wrong texts in the same order: the one that occurs is mutated
MUTATIONS = [
    ("MLP: L2 column norm of W_down", "scores.py",
     "return stats.mlp_abs * w.abs().sum(0)", "return stats.mlp_abs * w.norm(dim=0)",
     ["test_mlp_sensitivity_is_mean_abs_activation_times_l1_column_norm_of_down_proj"]),
    ("MLP: max instead of L1 column norm", "scores.py",
     "return stats.mlp_abs * w.abs().sum(0)", "return stats.mlp_abs * w.abs().amax(0)",
     ["test_mlp_sensitivity_is_mean_abs_activation_times_l1_column_norm_of_down_proj"]),
    ("attention: query heads tiled over KV heads (q % H_kv)", "scores.py",
     "per_channel.view(n_groups, geo.n_rep * geo.head_dim).mean(1)",
     "per_channel.view(geo.n_rep, n_groups, geo.head_dim).mean((0, 2))",
     ["test_attention_sensitivity_groups_query_heads_under_their_kv_head"]),
    ("attention: sum over the group's channels, not mean", "scores.py",
     "per_channel.view(n_groups, geo.n_rep * geo.head_dim).mean(1)",
     "per_channel.view(n_groups, geo.n_rep * geo.head_dim).sum(1)",
     ["test_attention_sensitivity_groups_query_heads_under_their_kv_head"]),
    ("attention: L2 column norm of W_o", "scores.py",
     "per_channel = stats.attn_abs * w.abs().sum(0)", "per_channel = stats.attn_abs * w.norm(dim=0)",
     ["test_attention_sensitivity_groups_query_heads_under_their_kv_head"]),
    ("attention: row norm of W_o", "scores.py",
     "per_channel = stats.attn_abs * w.abs().sum(0)", "per_channel = stats.attn_abs * w.abs().sum(1)",
     ["test_attention_sensitivity_groups_query_heads_under_their_kv_head"]),
    ("capture: mean activation, not mean absolute activation", "capture.py",
     "s = x.abs().float()", "s = x.float()",
     ["test_capture_records_mean_abs_inputs_of_down_and_o_proj"]),
    ("BI: cosine not clamped at 0", "capture.py",
     "d = 1 - cos_rows(h_in, h_out).clamp(0, 1)", "d = 1 - cos_rows(h_in, h_out).clamp(max=1)",
     ["test_block_influence_sums_one_minus_clamped_cosine_nan_counts_half"]),
    ("BI: NaN cosine counts 0", "capture.py",
     "return torch.nan_to_num(d, nan=0.5).sum().item()", "return torch.nan_to_num(d, nan=0.0).sum().item()",
     ["test_block_influence_sums_one_minus_clamped_cosine_nan_counts_half"]),
    ("BI: mean over tokens, not sum", "capture.py",
     "return torch.nan_to_num(d, nan=0.5).sum().item()", "return torch.nan_to_num(d, nan=0.5).mean().item()",
     ["test_block_influence_sums_one_minus_clamped_cosine_nan_counts_half",
      "test_calibration_bi_is_that_of_each_layers_own_input_and_output"]),
    ("BI: last token only (as the pair score)", "capture.py",
     "bi += block_influence(h_dev, out)", "bi += block_influence(h_dev[:, -1:], out[:, -1:])",
     ["test_calibration_bi_is_that_of_each_layers_own_input_and_output"]),
    ("angular: NaN cosine counts 0", "scores.py",
     "c = torch.nan_to_num(cos_rows(a, b), nan=0.5).clamp(0, 1)",
     "c = torch.nan_to_num(cos_rows(a, b), nan=0.0).clamp(0, 1)",
     ["test_angular_distance_clamps_and_counts_nan_as_half"]),
    ("angular: cosine not clamped at 0", "scores.py",
     "c = torch.nan_to_num(cos_rows(a, b), nan=0.5).clamp(0, 1)",
     "c = torch.nan_to_num(cos_rows(a, b), nan=0.5).clamp(-1, 1)",
     ["test_angular_distance_clamps_and_counts_nan_as_half"]),
    ("SBI: hidden[l] vs hidden[l+1]", "scores.py",
     "zip(hidden[l], hidden[l + 2])", "zip(hidden[l], hidden[l + 1])",
     ["test_pair_score_compares_h_l_with_h_l_plus_2_on_the_last_token_summed_over_windows",
      "test_come_plan_steps_follow_their_recorded_scores"]),
    ("SBI: first token instead of last", "scores.py",
     "a, b = a[:, -1], b[:, -1]", "a, b = a[:, 0], b[:, 0]",
     ["test_pair_score_compares_h_l_with_h_l_plus_2_on_the_last_token_summed_over_windows",
      "test_come_plan_steps_follow_their_recorded_scores"]),
    ("SBI: all tokens by default", "scores.py",
     "last_token: bool = True", "last_token: bool = False",
     ["test_pair_score_compares_h_l_with_h_l_plus_2_on_the_last_token_summed_over_windows"]),
    ("SBI: mean over windows, not sum", "scores.py",
     "scores.append(total)", "scores.append(total / len(hidden[l]))",
     ["test_pair_score_compares_h_l_with_h_l_plus_2_on_the_last_token_summed_over_windows"]),
    ("bi_ratio: swapped", "scores.py",
     "return a / (a + b), b / (a + b)", "return b / (a + b), a / (a + b)",
     ["test_bi_ratio"]),
    ("bi_ratio: power p ignored", "scores.py",
     "a, b = max(bi_a, 0.0) ** p, max(bi_b, 0.0) ** p", "a, b = max(bi_a, 0.0), max(bi_b, 0.0)",
     ["test_bi_ratio"]),
    ("split_budget: dominant layer (b) floored instead", "scores.py",
     "k_a = math.floor(r_a * k + 1e-9)", "k_a = k - math.floor(r_b * k + 1e-9)",
     ["test_split_budget"]),
    ("split_budget: dominant layer (a) floored instead", "scores.py",
     "k_b = math.floor(r_b * k + 1e-9)", "k_b = k - math.floor(r_a * k + 1e-9)",
     ["test_split_budget"]),
    ("split_budget: round instead of floor", "scores.py",
     "k_a = math.floor(r_a * k + 1e-9)", "k_a = round(r_a * k)",
     ["test_split_budget"]),
    ("split_budget: no float guard in floor", "scores.py",
     "k_b = math.floor(r_b * k + 1e-9)", "k_b = math.floor(r_b * k)",
     ["test_split_budget"]),
    ("split_budget: tie goes to layer b", "scores.py",
     "if r_a >= r_b:", "if r_a > r_b:",
     ["test_split_budget"]),
    ("top_k: in score order, not original order", "scores.py",
     "return sorted(order.tolist())", "return order.tolist()",
     ["test_top_k_keeps_the_highest_in_original_order_ties_to_the_lower_index"]),
    ("top_k: lowest scores", "scores.py",
     "order = torch.argsort(-scores, stable=True)[:k]", "order = torch.argsort(scores, stable=True)[:k]",
     ["test_top_k_keeps_the_highest_in_original_order_ties_to_the_lower_index"]),
    ("top_k: ties to the higher index", "scores.py",
     "order = torch.argsort(-scores, stable=True)[:k]",
     "order = (len(scores) - 1 - torch.argsort(-scores.flip(0), stable=True))[:k]",
     ["test_top_k_keeps_the_highest_in_original_order_ties_to_the_lower_index"]),
    ("mean norms: weighted by the ratio", "merge.py",
     ("target.weight.copy_(_weighted(src, [1.0 / len(src)] * len(src)))",
      "_set_weight(target, _weighted(src, [1.0 / len(src)] * len(src)))"),
     ("target.weight.copy_(_weighted(src, list(ratio)[: len(src)]))",
      "_set_weight(target, _weighted(src, list(ratio)[: len(src)]))"),
     ["test_mean_norm_averages_the_contributing_layers_plainly"]),
    ("mean norms: a non-contributing layer averaged in", "merge.py",
     "src = [get(x).weight for x, p in zip(layers, pieces) if p]",
     "src = [get(x).weight for x, p in zip(layers, pieces)]",
     ["test_mean_norm_averages_the_contributing_layers_plainly"]),
    ("Qwen3 q/k norms: plain mean", "merge.py",
     ("target.weight.copy_(_weighted(src, list(ratio)))", "_set_weight(target, _weighted(src, list(ratio)))"),
     ("target.weight.copy_(_weighted(src, [0.5, 0.5]))", "_set_weight(target, _weighted(src, [0.5, 0.5]))"),
     ["test_qwen3_qk_norms_are_averaged_with_the_ratio"]),
    ("Qwen3 q/k norms: ratio swapped", "merge.py",
     ("target.weight.copy_(_weighted(src, list(ratio)))", "_set_weight(target, _weighted(src, list(ratio)))"),
     ("target.weight.copy_(_weighted(src, list(ratio)[::-1]))",
      "_set_weight(target, _weighted(src, list(ratio)[::-1]))"),
     ["test_qwen3_qk_norms_are_averaged_with_the_ratio"]),
    ("CoMe: argmax pair instead of argmin", "methods/come.py",
     "return min(cands, key=lambda i: (sbi[i], i))", "return max(cands, key=lambda i: (sbi[i], i))",
     ["test_come_plan_steps_follow_their_recorded_scores"]),
    ("CoMe: ratio of the pair swapped", "methods/come.py",
     "r_bi = bi_ratio(bi[l], bi[l + 1])", "r_bi = bi_ratio(bi[l + 1], bi[l])",
     ["test_come_plan_steps_follow_their_recorded_scores"]),
    ("CoMe: budget split with the layers swapped", "methods/come.py",
     "k_mlp = split_budget(ratio, d_ff)", "k_mlp = split_budget(ratio[::-1], d_ff)",
     ["test_come_plan_steps_follow_their_recorded_scores"]),
]


def extract(ref: str, dest: Path) -> None:
    """The committed `src` of `ref` into dest/src (git archive: the working tree and its index stay untouched)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"], check=True,
                             capture_output=True).stdout
    tmp = dest / "src.tar"
    tmp.write_bytes(archive)
    with tarfile.open(tmp) as tar:
        tar.extractall(dest, filter="data")
    tmp.unlink()


def run_tests(tree: Path, names: list[str] | None) -> tuple[int, str]:
    """pytest on the copy's tests (the copy's src first on the path); (return code, last output line)."""
    target = [f"{TESTS}::{n}" for n in names] if names else [TESTS]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *target],
                          cwd=tree, env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.strip().splitlines() if x.strip()]
    return proc.returncode, lines[-1] if lines else proc.stderr.strip()[-200:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="HEAD", help="the commit whose src is mutated (default HEAD)")
    ap.add_argument("--only", default=None, help="run only the mutations whose name contains this")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="come-mutations-"))
    pristine = work / "pristine"
    pristine.mkdir()
    extract(args.ref, pristine)
    (pristine / "tests").mkdir()
    for f in ("conftest.py", "test_formulas.py"):
        shutil.copy(ROOT / "tests" / f, pristine / "tests" / f)
    shutil.copy(ROOT / "pyproject.toml", pristine / "pyproject.toml")  # pytest settings (markers)
    t0 = time.perf_counter()
    rc, last = run_tests(pristine, None)
    if rc != 0:
        print(f"the unmutated source fails the formula tests ({last}): fix that first", file=sys.stderr)
        return 1
    print(f"unmutated {args.ref}: {last}\n")
    print("| mutation | test | result |")
    print("|---|---|---|")
    weak = 0
    for name, rel, old, new, tests in MUTATIONS:
        if args.only and args.only not in name:
            continue
        tree = work / "mutant"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(pristine, tree)
        path = tree / "src" / "come" / rel
        text = path.read_text()
        olds, news = (old, new) if isinstance(old, tuple) else ((old,), (new,))
        found = [(o, n) for o, n in zip(olds, news) if text.count(o) == 1]
        if not found:
            print(f"| {name} | - | not applied: `{olds[0]}` does not occur once in {rel} |", flush=True)
            weak += 1
            continue
        path.write_text(text.replace(*found[0]))
        for test in tests:
            rc, last = run_tests(tree, [test])
            result = {0: "passed = test too weak", 1: "FAILED as expected"}.get(rc, f"error (exit {rc}): {last}")
            weak += rc != 1
            print(f"| {name} | `{test}` | {result} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{weak} mutation/test pairs did not fail as expected; {time.perf_counter() - t0:.0f} s")
    return 1 if weak else 0


if __name__ == "__main__":
    sys.exit(main())
