"""Bad-input and fault matrix: `come` run as a careless or hostile user would, one subprocess per case, on a tiny
random Llama. Prints one table row per case: exit code, first line of the message, and what was left behind
(data destroyed or kept, temporaries, files a foreign model's code wrote).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python experiments/fault_matrix.py [--src SRC] [--only NAME,...]

`--src` is the `src` folder whose `come` is tested (default: this checkout's), so the same matrix runs on an
older checkout (`git worktree add /tmp/wt-before HEAD` -> `--src /tmp/wt-before/src`). Cases that need a tmpfs
(read-only, full, mount point) or `chattr` need root and say "skipped" otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PRUNE = ["--calib-samples", "2", "--calib-seq-len", "32", "--device", "cpu"]
EVAL = ["--ppl-seq-len", "32", "--ppl-max-windows", "2", "--device", "cpu"]


class Matrix:
    def __init__(self, src: Path, work: Path):
        self.src, self.w = src, work
        self.env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                        OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        self.mounts: list[Path] = []

    # --- running ---

    def come(self, *argv, cwd: Path | None = None, stdin: str | None = None, timeout: int = 300):
        cmd = [sys.executable, "-m", "come.cli", *map(str, argv)]
        return subprocess.run(cmd, cwd=cwd or self.w, env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=timeout)

    def fixtures(self) -> None:
        from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        for name, kw in (("base", {}), ("seed1", {"seed": 1}), ("wide", {"hidden_size": 120})):
            tiny_model(**kw).save_pretrained(self.w / "models" / name)
            tok.save_pretrained(self.w / "models" / name)
        (self.w / "calib.txt").write_text(SAMPLE_TEXT * 40)
        (self.w / "eval.txt").write_text(SAMPLE_TEXT[::-1] * 40)  # perplexity text: never the calibration file
        for out, extra in (("plain", []), ("refit", ["--method", "come-plus", "--calib-samples", "4"])):
            r = self.come("prune", "models/base", "--target-layers", "4", "--calib-data", "calib.txt", *PRUNE,
                          "--out", f"plans/{out}", *extra)
            assert r.returncode == 0, r.stderr

    def model_copy(self, name: str, src: str = "base") -> Path:
        dst = self.w / "cases" / name
        shutil.copytree(self.w / "models" / src, dst)
        return dst

    def plan_copy(self, name: str, edit, src: str = "plain") -> Path:
        dst = self.w / "cases" / name
        shutil.copytree(self.w / "plans" / src, dst)
        plan = json.loads((dst / "come_plan.json").read_text())
        edit(plan)
        (dst / "come_plan.json").write_text(json.dumps(plan))
        return dst

    def mount(self, where: Path, opts: str) -> bool:
        where.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if ok.returncode == 0:
            self.mounts.append(where)
        return ok.returncode == 0

    def unmount_all(self) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)

    def hidden(self, folder: Path) -> list[str]:
        """Our temporaries (and anything hidden) in `folder`."""
        return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def merge_index(plan: dict) -> int:
    return next(i for i, s in enumerate(plan["steps"]) if s["op"] == "merge")


def cases(m: Matrix):
    """(name, run() -> (CompletedProcess | None, leftovers)) for every case."""
    w = m.w

    def out_is_cwd(overwrite: bool, sub: str, cmd):
        def run():
            d = w / "cases" / sub
            (d / "child").mkdir(parents=True)
            (d / "keep.txt").write_text("user data")
            (d / "child" / "keep.txt").write_text("user data")
            cwd = d / "child" if sub.endswith("parent") else d
            target = ".." if sub.endswith("parent") else "."
            r = m.come(*cmd(target), *(["--overwrite"] if overwrite else []), cwd=cwd)
            kept = (d / "keep.txt").exists() and (d / "child" / "keep.txt").exists()
            result = (d / "come_plan.json").exists() or (d / "eval.json").exists() or \
                (d / "child" / "come_plan.json").exists()
            return r, f"user files {'kept' if kept else 'DELETED'}; result {'written' if result else 'none'}"
        return run

    base, calib, text = str(w / "models/base"), str(w / "calib.txt"), str(w / "eval.txt")

    def prune_cmd(out):
        return ["prune", base, "--target-layers", "5", "--calib-data", calib, *PRUNE, "--out", out]

    def apply_cmd(out):
        return ["apply", str(w / "plans/plain"), "--model", base, "--out", out]

    def eval_cmd(out):
        return ["eval", base, "--ppl", text, *EVAL, "--out", out]

    def compare_cmd(out):
        return ["compare", base, "--target-layers", "5", "--methods", "sleb", "--ppl", text,
                "--ppl-seq-len", "32", "--ppl-max-windows", "2", "--calib-data", calib, "--calib-samples", "2",
                "--calib-seq-len", "32", "--device", "cpu", "--out", out]

    yield "prune --out . --overwrite", out_is_cwd(True, "p-dot", prune_cmd)
    yield "prune --out .. --overwrite", out_is_cwd(True, "p-parent", prune_cmd)
    yield "prune --out . (empty folder)", _empty_cwd(m, prune_cmd, "p-empty")
    yield "apply --out . --overwrite", out_is_cwd(True, "a-dot", apply_cmd)
    yield "eval --out . --overwrite", out_is_cwd(True, "e-dot", eval_cmd)
    yield "compare --out . (empty folder)", _empty_cwd(m, compare_cmd, "c-empty")

    def out_is_model():
        model = m.model_copy("victim")
        r = m.come("prune", model, "--target-layers", "5", "--calib-data", calib, *PRUNE, "--out", model,
                   "--overwrite")
        plan = (model / "come_plan.json").exists()
        return r, "source model " + ("REPLACED by the result" if plan else "kept" if (model / "config.json").exists()
                                     else "DELETED")
    yield "prune --out MODEL --overwrite", out_is_model

    def overwrite_fails_midway():
        out = w / "cases" / "ow" / "out"
        r0 = m.come(*prune_cmd(str(out)))
        stuck = out / "stuck.txt"
        stuck.write_text("cannot be deleted")
        if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
            return None, "skipped (chattr +i needs root)"
        try:
            r = m.come(*prune_cmd(str(out)), "--overwrite")
        finally:
            for p in out.parent.rglob("stuck.txt"):
                subprocess.run(["chattr", "-i", str(p)], capture_output=True)
        files = sorted(p.name for p in out.iterdir()) if out.exists() else []
        state = "new result whole" if "come_plan.json" in files and "stuck.txt" not in files else \
            f"out holds {len(files)} files ({'old plan' if 'come_plan.json' in files else 'no plan'})"
        assert r0.returncode == 0
        return r, f"{state}; hidden: {m.hidden(out.parent) or 'none'}"
    yield "--overwrite, old folder undeletable part-way", overwrite_fails_midway

    def on_tmpfs(name, opts, out_of):
        def run():
            mnt = w / "cases" / name
            if not m.mount(mnt, opts):
                return None, "skipped (mount needs root)"
            out = out_of(mnt)
            t = time.perf_counter()
            r = m.come(*prune_cmd(str(out)))
            return r, f"{time.perf_counter() - t:.1f} s; out {'exists' if out.exists() else 'absent'}; hidden: " \
                      f"{m.hidden(out.parent) if out.parent.exists() else '-'}"
        return run
    yield "--out on a read-only file system", on_tmpfs("ro", "ro,size=1m", lambda d: d / "out")
    yield "--out on a full file system (64 KiB)", on_tmpfs("full", "size=64k", lambda d: d / "out")
    yield "--out is an empty mount point", on_tmpfs("mnt", "size=8m", lambda d: d)

    def below_file():
        f = w / "cases" / "afile"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
        return m.come(*prune_cmd(str(f / "out"))), f"file {'kept' if f.is_file() else 'GONE'}"
    yield "--out below a file", below_file

    def symlink_out():
        real = w / "cases" / "real"
        real.mkdir(parents=True)
        (real / "keep.txt").write_text("x")
        link = w / "cases" / "link"
        link.symlink_to(real)
        r = m.come(*prune_cmd(str(link)), "--overwrite")
        return r, f"target files {'kept' if (real / 'keep.txt').exists() else 'DELETED'}; link " \
                  f"{'kept' if link.is_symlink() else 'replaced'}"
    yield "--out is a symlink to a folder (--overwrite)", symlink_out

    def signal_during_save(d: Path, sig: int):
        """Run a prune into d/out and send `sig` as soon as its temporary folder appears; (process, sent)."""
        d.mkdir(parents=True)
        p = subprocess.Popen([sys.executable, "-m", "come.cli", *prune_cmd(str(d / "out"))], cwd=w, env=m.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < 300:
            if any(x.name.startswith(".out.tmp") for x in d.iterdir()):
                p.send_signal(sig)
                return p, True
            time.sleep(0.002)
        return p, False

    def sigkill_then_rerun():
        d = w / "cases" / "kill"
        p, killed = signal_during_save(d, signal.SIGKILL)
        p.communicate()
        left = m.hidden(d)
        r = m.come(*prune_cmd(str(d / "out")))
        after = [n for n in m.hidden(d) if n.startswith(".out.")]
        return r, f"killed during save: {killed}; after kill: {left or 'none'}; after a rerun beside it: " \
                  f"{after or 'none'}"
    yield "SIGKILL during save, then a rerun", sigkill_then_rerun

    def sigterm():
        d = w / "cases" / "term"
        p, _ = signal_during_save(d, signal.SIGTERM)
        _, err = p.communicate()
        r = subprocess.CompletedProcess(p.args, p.returncode, "", err)
        return r, f"hidden: {m.hidden(d) or 'none'}; out {'exists' if (d / 'out').exists() else 'absent'}"
    yield "SIGTERM during save", sigterm

    def compare_stale():
        out = w / "cases" / "cmp" / "c"
        r0 = m.come(*compare_cmd(str(out)))
        stale = out.with_name("c.partial") / "methods" / ".sleb.tmp-dead"
        stale.mkdir(parents=True)
        (stale / "model.safetensors").write_text("half-written")
        os.utime(stale, (0, 0))
        r = m.come(*compare_cmd(str(out)), "--resume")
        carried = (out / "methods" / ".sleb.tmp-dead").exists()
        assert r0.returncode == 0, r0.stderr
        return r, "stale temporary " + ("CARRIED into the result" if carried else "not in the result")
    yield "compare --resume with a stale methods/.NAME.tmp-*", compare_stale

    # --- silent corruption: checkpoints ---

    def checkpoint(name, edit, cmd="prune"):
        def run():
            from safetensors.torch import load_file, save_file

            d = m.model_copy(name)
            sd = load_file(d / "model.safetensors")
            edit(d, sd)
            save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
            if cmd == "prune":
                r = m.come("prune", d, "--target-layers", "4", "--calib-data", calib, *PRUNE, "--out", d.parent /
                           f"{name}-out")
            else:
                r = m.come("eval", d, "--ppl", text, *EVAL)
            return r, ""
        return run

    def no_layer5(d, sd):
        for k in [k for k in sd if ".layers.5." in k or k == "lm_head.weight"]:
            del sd[k]

    def more_layers(d, sd):
        cfg = json.loads((d / "config.json").read_text())
        cfg["num_hidden_layers"] = 8
        (d / "config.json").write_text(json.dumps(cfg))

    def unexpected(d, sd):
        sd["model.extra.weight"] = sd["model.norm.weight"].clone()

    yield "checkpoint without layers.5.* and lm_head (prune)", checkpoint("nolayer", no_layer5)
    yield "config claims 8 layers, weights hold 6 (eval)", checkpoint("morelayers", more_layers, "eval")
    yield "checkpoint with an unexpected tensor (prune)", checkpoint("unexp", unexpected)

    # --- silent corruption: plans ---

    def apply_case(name, edit, src="plain", model=None, extra=()):
        def run():
            d = m.plan_copy(name, edit, src)
            out = d.with_name(name + "-out")
            r = m.come("apply", d, "--model", model or base, "--out", out, *extra)
            return r, f"out {'written' if out.exists() else 'absent'}"
        return run

    def neg_layer(p):
        p["steps"][merge_index(p)]["layer"] = -2

    def dup_channel(p):
        ch = p["steps"][merge_index(p)]["mlp_channels"][0]
        ch[1] = ch[0]

    def few_channels(p):
        p["steps"][merge_index(p)]["mlp_channels"][0].pop()

    def nan_ratio(p):
        p["steps"][merge_index(p)]["ratio"] = [math.nan, 0.5]

    def neg_ratio(p):
        p["steps"][merge_index(p)]["ratio"] = [-0.5, 1.5]

    def wrong_tree(p):
        p["tree"] = [[0], [1], [2, 3, 4, 5]] + p["tree"][4:]

    def no_groups(p):
        del p["steps"][merge_index(p)]["attn_groups"]

    def str_layer(p):
        p["steps"][0]["layer"] = "2"

    def unknown_op(p):
        p["steps"][0]["op"] = "explode"

    yield "apply: negative layer index", apply_case("neg", neg_layer)
    yield "apply: duplicated channel index", apply_case("dup", dup_channel)
    yield "apply: one channel index too few", apply_case("few", few_channels)
    yield "apply: NaN ratio", apply_case("nan", nan_ratio)
    yield "apply: negative ratio", apply_case("negr", neg_ratio)
    yield "apply: wrong tree", apply_case("tree", wrong_tree)
    yield "apply: step without attn_groups", apply_case("nogroups", no_groups)
    yield "apply: layer as a string", apply_case("strl", str_layer)
    yield "apply: unknown op", apply_case("op", unknown_op)

    def scalar_sidecar():
        import torch
        from safetensors.torch import load_file, save_file

        d = m.plan_copy("sidecar", lambda p: None, "refit")
        t = load_file(d / "come_plan.safetensors")
        save_file({k: torch.tensor(1e30) for k in t}, d / "come_plan.safetensors")
        out = d.with_name("sidecar-out")
        r = m.come("apply", d, "--model", base, "--out", out)
        return r, f"out {'written' if out.exists() else 'absent'}"
    yield "apply: sidecar tensor is a scalar 1e30", scalar_sidecar

    yield "apply: other seed, same shape", apply_case("seed", lambda p: None, model=str(w / "models/seed1"))
    yield "apply: other seed with --force", apply_case("force", lambda p: None, model=str(w / "models/seed1"),
                                                       extra=("--force",))
    yield "apply: other hidden size", apply_case("wide", lambda p: None, model=str(w / "models/wide"))

    def other_cwd():
        d = w / "cases" / "elsewhere"
        (d / "models" / "base").mkdir(parents=True)  # another model at the same relative path
        for f in (w / "models" / "seed1").iterdir():
            shutil.copy(f, d / "models" / "base" / f.name)
        r = m.come("apply", w / "plans" / "plain", "--out", "out", cwd=d)
        return r, f"out {'written' if (d / 'out').exists() else 'absent'}"
    yield "apply from another folder (plan names models/base)", other_cwd

    def empty_cwd_apply():
        d = w / "cases" / "nothing-here"
        d.mkdir(parents=True)
        r = m.come("apply", w / "plans" / "plain", "--out", "out", cwd=d)
        return r, f"out {'written' if (d / 'out').exists() else 'absent'}"
    yield "apply from a folder without the base model", empty_cwd_apply

    # --- foreign code ---

    def foreign(flag: tuple[str, ...], name: str):
        def run():
            d = m.model_copy(name)
            marker = w / "cases" / f"{name}-RAN"
            cfg = json.loads((d / "config.json").read_text())
            cfg["model_type"] = "evil"
            cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
            (d / "config.json").write_text(json.dumps(cfg))
            (d / "evil.py").write_text(
                f"open({str(marker)!r}, 'w').write('the folder code ran')\n"
                "from transformers import LlamaConfig, LlamaForCausalLM\n"
                "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
                "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
            r = m.come("eval", d, "--ppl", text, *EVAL, *flag, stdin="y\n")
            return r, "folder code " + ("RAN" if marker.exists() else "did not run")
        return run
    yield "model folder with auto_map, stdin answers y", foreign((), "evil")
    yield "model folder with auto_map, --trust-remote-code", foreign(("--trust-remote-code",), "evil2")

    # --- messages ---

    def corrupt_config():
        d = m.model_copy("badcfg")
        (d / "config.json").write_text('{"model_type": "llama",')
        return m.come("eval", d, "--ppl", text, *EVAL), ""
    yield "corrupt local config.json", corrupt_config

    yield "--device cuda without a GPU", lambda: (m.come("eval", base, "--ppl", text, *EVAL[:-2], "--device",
                                                         "cuda"), "")

    def broken_weights():
        d = m.model_copy("broken")
        (d / "model.safetensors").unlink()
        (d / "model.safetensors").symlink_to(d / "gone.safetensors")
        return m.come("eval", d, "--ppl", text, *EVAL), ""
    yield "weights file is a broken link", broken_weights

    def truncated_weights():
        d = m.model_copy("trunc")
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[:4000])
        return m.come("eval", d, "--ppl", text, *EVAL), ""
    yield "weights file truncated", truncated_weights

    yield "--store-device cuda without a GPU", lambda: (m.come(*prune_cmd(str(w / "cases/sd")), "--store-device",
                                                               "cuda"), "")

    def int_text():
        f = w / "cases" / "ints.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text('{"text": 5}\n' * 50)
        t = time.perf_counter()
        r = m.come("prune", base, "--target-layers", "5", "--calib-data", f, *PRUNE, "--out", w / "cases/ints-out")
        return r, f"{time.perf_counter() - t:.1f} s"
    yield 'calibration JSONL with {"text": 5}', int_text

    def forged_baseline():
        f = w / "cases" / "forged.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"settings": [], "model": {"ppl": 3}}))
        return m.come("eval", base, "--ppl", text, *EVAL, "--baseline", f), ""
    yield "forged baseline eval.json", forged_baseline

    def timed(name, argv):
        def run():
            t = time.perf_counter()
            r = m.come(*argv)
            return r, f"{time.perf_counter() - t:.1f} s"
        return run
    yield "missing calibration file", timed("missing", ["prune", base, "--target-layers", "5", "--calib-data",
                                                        w / "nope.txt", *PRUNE, "--out", w / "cases/miss-out"])
    yield "mistyped --baseline (org/name form)", timed("typo", ["eval", base, "--ppl", text, *EVAL, "--baseline",
                                                                 "models/bsae"])
    yield "--calib-seq-len beyond the context (1024 > 512)", timed("ctx", [
        "prune", base, "--target-layers", "5", "--calib-data", calib, "--calib-samples", "1", "--calib-seq-len",
        "1024", "--device", "cpu", "--out", w / "cases/ctx-out"])


    # --- distill, compare and every writer: the same output discipline ---

    student = str(w / "plans/plain")

    def distill_cmd(out, teacher=base, data=calib):
        return ["distill", "--student", student, "--teacher", teacher, "--train-data", data, "--train-seq-len", "32",
                "--train-batch-size", "2", "--steps", "1", "--device", "cpu", "--out", out]

    def distill_out_teacher():
        teacher = m.model_copy("teacher")
        before = sorted(p.name for p in teacher.iterdir())
        r = m.come(*distill_cmd(str(teacher), teacher=str(teacher)), "--overwrite")
        return r, "teacher " + ("kept" if sorted(p.name for p in teacher.iterdir()) == before else "REPLACED")
    yield "distill --out TEACHER --overwrite", distill_out_teacher

    def compare_out_holds_ppl():
        d = w / "cases" / "ppldir"
        d.mkdir(parents=True)
        shutil.copy(text, d / "ppl.txt")
        r = m.come(*compare_cmd(str(d))[:-2], "--ppl", d / "ppl.txt", "--out", d, "--overwrite")
        return r, "evaluation text " + ("kept" if (d / "ppl.txt").exists() else "DELETED")
    yield "compare --ppl-data DIR/ppl.txt --out DIR --overwrite", compare_out_holds_ppl

    def parent_of_home():
        d = w / "cases" / "users"
        (d / "me").mkdir(parents=True)
        (d / "me" / "keep.txt").write_text("user data")
        env = m.env
        m.env = dict(env, HOME=str(d / "me"))
        try:
            r = m.come(*prune_cmd(str(d)), "--overwrite")
        finally:
            m.env = env
        return r, "home " + ("kept" if (d / "me" / "keep.txt").exists() else "DELETED")
    yield "--out a parent of $HOME --overwrite", parent_of_home

    def while_running(d: Path, argv, when: str, act):
        """Run `come argv` in the background and call act(process) as soon as `d/when*` appears."""
        d.mkdir(parents=True, exist_ok=True)
        p = subprocess.Popen([sys.executable, "-m", "come.cli", *map(str, argv)], cwd=w, env=m.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < 300:
            if any(x.name.startswith(when) for x in d.iterdir()):
                act(p)
                break
            time.sleep(0.002)
        _, err = p.communicate()
        return subprocess.CompletedProcess(p.args, p.returncode, "", err)

    def file_appears():
        d = w / "cases" / "appears"
        out = d / "out"

        def write_notes(p):
            out.mkdir(exist_ok=True)
            (out / "notes.txt").write_text("the user's notes")
        r = while_running(d, prune_cmd(str(out)), ".out.tmp-", write_notes)
        kept = [x.name for x in d.iterdir() if x.name.startswith("come-rescue-")]
        return r, f"notes {'kept' if (out / 'notes.txt').exists() else 'DELETED'}; result kept beside: {bool(kept)}"
    yield "a file appears in --out during the save", file_appears

    def second_run():
        d = w / "cases" / "second"
        out = d / "out"
        seen = {}

        def run_second(p):
            p.send_signal(signal.SIGSTOP)  # the first run holds the lock while stopped
            try:
                seen["r"] = m.come(*prune_cmd(str(out)))
            finally:
                p.send_signal(signal.SIGCONT)
        first = while_running(d, prune_cmd(str(out)), ".out.lock", run_second)
        whole = (out / "come_plan.json").exists()
        return seen.get("r"), f"first run: exit {first.returncode}; out {'whole' if whole else 'absent'}"
    yield "a second prune on the same --out while the first runs", second_run

    def linked_checkpoint():
        d = w / "cases" / "linked"
        victim = d / "victim"
        victim.mkdir(parents=True)
        (victim / "come_plan.json").write_text("the user's file")
        (d / ".out.resume").symlink_to(victim)
        r = m.come(*prune_cmd(str(d / "out")))
        kept = (victim / "come_plan.json").read_text() == "the user's file"
        return r, "user file " + ("kept" if kept else "OVERWRITTEN")
    yield "--out's .OUT.resume is a symlink to a user folder", linked_checkpoint

    def full_during_save():
        from safetensors import safe_open

        with safe_open(str(w / "models/base/model.safetensors"), "pt") as st:
            sizes = {k: math.prod(st.get_slice(k).get_shape()) for k in st.keys()}
        layer = sum(n for k, n in sizes.items() if ".layers.0." in k)
        need = (sum(sizes.values()) - layer) * 4  # what the free-space check asks for 5 of 6 layers: it passes
        mnt = w / "cases" / "fullsave"
        if not m.mount(mnt, f"size={need // 1024 + 8}k"):
            return None, "skipped (mount needs root)"
        m.env["COME_RESCUE_DIR"] = str(w / "cases" / "rescue")
        try:
            r = m.come(*prune_cmd(str(mnt / "out")))
        finally:
            del m.env["COME_RESCUE_DIR"]
        rescued = list((w / "cases" / "rescue").glob("come-rescue-*/model.safetensors"))
        return r, f"rescue folder with the model: {bool(rescued)}; hidden on the disk: {m.hidden(mnt) or 'none'}"
    yield "the disk fills up during the save (passes the free-space check)", full_during_save

    yield "--out name of 250 characters", timed("long", prune_cmd(str(w / "cases" / ("x" * 250))))

    def resume_other_calib():
        d = w / "cases" / "rcal"
        d.mkdir(parents=True)
        shutil.copy(calib, d / "calib.txt")
        argv = ["prune", base, "--target-layers", "4", "--method", "sleb", "--calib-data", d / "calib.txt", *PRUNE,
                "--out", d / "out"]
        while_running(d, argv, ".out.resume", lambda p: p.send_signal(signal.SIGKILL))
        (d / "calib.txt").write_text((d / "calib.txt").read_text().upper())
        return m.come(*argv, "--resume"), f"checkpoint {'kept' if (d / '.out.resume').exists() else 'gone'}"
    yield "prune --resume after the calibration text changed", resume_other_calib

    def nonfinite(cmd):
        def run():
            from safetensors.torch import load_file, save_file

            d = w / "cases" / "nanmodel"
            if not d.exists():
                shutil.copytree(w / "models/base", d)
                sd = load_file(d / "model.safetensors")
                sd["model.layers.2.mlp.down_proj.weight"][0, 0] = math.nan
                save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
            if cmd == "prune":
                return m.come("prune", d, "--target-layers", "5", "--calib-data", calib, *PRUNE, "--out",
                              d.parent / "nan-out"), ""
            out = d.parent / "nan-eval"
            r = m.come("eval", d, "--ppl", text, *EVAL, "--out", out, "--allow-nonfinite")
            raw = (out / "eval.json").read_text() if (out / "eval.json").exists() else ""
            state = "standard JSON (null)" if raw and "NaN" not in raw else "holds NaN" if raw else "absent"
            return r, f"eval.json {state}"
        return run
    yield "NaN weight in the model (prune)", nonfinite("prune")
    yield "NaN weight in the model (eval --allow-nonfinite)", nonfinite("eval")

    def small_file(name, content: bytes | str):
        f = w / "cases" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)
        return f

    yield "empty .jsonl calibration file", lambda: (m.come("prune", base, "--target-layers", "5", "--calib-data",
                                                           small_file("empty.jsonl", ""), *PRUNE, "--out",
                                                           w / "cases/empty-out"), "")
    yield "--laco-t nan", lambda: (m.come(*prune_cmd(str(w / "cases/rp")), "--laco-t", "nan"), "")
    yield "binary recipe file", lambda: (m.come("prune", base, "--config", small_file("bin.yaml", bytes(range(256))),
                                                "--out", w / "cases/bin-out"), "")
    bomb = ["method_options:", "  a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"  {n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdef", "bcdefg")]
    yield "YAML alias bomb in a recipe value", timed("bomb", ["prune", base, "--config",
                                                             small_file("bomb.yaml", "\n".join(bomb) + "\n"),
                                                             "--out", w / "cases/bomb-out"])

    def plan_file(name, edit):
        def run():
            d = m.plan_copy(name, lambda p: None, "refit")
            edit(d)
            return m.come("apply", d, "--model", base, "--out", d.with_name(name + "-out")), ""
        return run
    yield "apply: come_plan.safetensors empty", plan_file("emptyside", lambda d: (d / "come_plan.safetensors")
                                                           .write_bytes(b""))
    yield "apply: plan JSON nested 100k deep", plan_file("deep", lambda d: (d / "come_plan.json").write_text(
        "[" * 100_000 + "]" * 100_000))
    yield "apply: plan without base_model", plan_file("nobase", lambda d: (d / "come_plan.json").write_text(
        json.dumps({k: v for k, v in json.loads((d / "come_plan.json").read_text()).items() if k != "base_model"})))

    def unrelated_teacher():
        from safetensors.torch import load_file, save_file

        t = m.model_copy("otherteacher", "seed1")
        sd, ref = load_file(t / "model.safetensors"), load_file(w / "models/base/model.safetensors")
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            sd[k] = ref[k]
        save_file(sd, t / "model.safetensors", metadata={"format": "pt"})
        r = m.come(*distill_cmd(str(w / "cases/ot-out"), teacher=str(t)))
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("come: warning")]
        return r, warned[0][:90] if warned else "no warning"
    yield "distill with a teacher whose layers all differ (same embeddings)", unrelated_teacher

def _empty_cwd(m: Matrix, cmd, name: str):
    def run():
        d = m.w / "cases" / name
        d.mkdir(parents=True)
        r = m.come(*cmd("."), cwd=d)
        done = (d / "come_plan.json").exists() or (d / "compare.json").exists()
        lost = "refused up front" if r.returncode == 2 else "LOST"
        return r, f"result {'written' if done else lost}; folder " \
                  f"{'exists' if d.exists() else 'GONE'}"
    return run


def first_line(r) -> str:
    if r is None:
        return "-"
    lines = [ln for ln in (r.stderr or "").splitlines() if ln.strip() and "it/s]" not in ln]
    err = [ln for ln in lines if ln.startswith(("come: error", "Traceback", "come: "))]
    if err and err[0].startswith("Traceback"):
        last = next((ln for ln in reversed(lines) if not ln.startswith(" ")), lines[-1])
        return "TRACEBACK " + last.strip()
    if err:
        return err[0]
    return (r.stdout.strip().splitlines() or [""])[-1] if r.returncode == 0 else (lines[-1] if lines else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT / "src"), help="the src folder of the come to test")
    ap.add_argument("--only", default=None, help="comma list of substrings of case names")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # a stopped run still unmounts its file systems
    work = Path(tempfile.mkdtemp(prefix="come-faults-"))
    m = Matrix(Path(args.src).resolve(), work)
    print(f"come from {m.src}; scratch {work}", file=sys.stderr)
    rows = []
    try:
        m.fixtures()
        for name, run in cases(m):
            if args.only and not any(s in name for s in args.only.split(",")):
                continue
            try:
                r, left = run()
            except Exception as e:  # the harness's own failure, reported as such
                r, left = None, f"harness error: {type(e).__name__}: {e}"
            code = "-" if r is None else str(r.returncode)
            rows.append((name, code, first_line(r)[:150].replace("|", "/"), left.replace("|", "/")))
            print(f"{name}: {code}", file=sys.stderr, flush=True)
    finally:
        m.unmount_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("| case | exit | first line of the message | leftovers |")
    print("|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
