"""A prune killed with SIGKILL mid-run goes on from its checkpoint and ends with the uninterrupted plan and weights."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import prune_config, same_weights

from come import prune
from come.errors import ComeError
from come.plan import PLAN_FILE
from come.resume import checkpoint_for, load

ROOT = Path(__file__).resolve().parent

KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import prune_config
    import come.resume as resume
    from come import prune

    kill_after = {kill_after}
    make_writer = resume.writer

    def writer(*args, **kwargs):  # the product's checkpoint writer, then a SIGKILL after the k-th checkpoint
        write = make_writer(*args, **kwargs)
        def on_step(ctx):
            write(ctx)
            if len(ctx.steps) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return on_step

    resume.writer = writer
    prune(prune_config({path!r}, {text!r}, **json.loads({fields!r})), checkpoint={ck!r})
""")


def decisions(plan) -> dict:
    data = json.loads(plan.to_json())
    return {k: data[k] for k in ("method", "steps", "tree")}


@pytest.mark.parametrize("fields,kill_after", [
    ({"method": "come-plus", "target_layers": 3}, 3),  # merge + re-fit, merge + re-fit: killed after 2 merges
    ({"method": "sleb", "target_layers": 3}, 2),
    ({"method": "come", "target_layers": 3, "method_options": {"pair_score": "drop"}}, 1),
    ({"method": "come-splice", "target_layers": 3, "method_options": {"screen": 0}}, 1),
])
def test_sigkilled_prune_resumes_to_the_uninterrupted_plan(tiny_dir, tmp_path, fields, kill_after):
    path, text = tiny_dir
    ck = tmp_path / "ck"
    script = KILLED_RUN.format(tests=str(ROOT), kill_after=kill_after, path=str(path), text=str(text),
                               fields=json.dumps(fields), ck=str(ck))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = load(ck)
    assert partial is not None and 0 < len(partial.steps) < 10
    assert partial.steps[-1]["op"] != "merge" or fields["method"] != "come-plus"  # a merge is kept with its re-fit

    resumed = prune(prune_config(path, text, **fields), checkpoint=ck, resume=True)
    whole = prune(prune_config(path, text, **fields))
    assert resumed.plan.steps[: len(partial.steps)] == partial.steps
    assert decisions(resumed.plan) == decisions(whole.plan)
    assert same_weights(resumed.model, whole.model)


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_dir, tmp_path):
    path, text = tiny_dir
    ck = tmp_path / "ck"
    prune(prune_config(path, text, method="sleb", target_layers=4), checkpoint=ck)
    assert (ck / PLAN_FILE).exists()
    with pytest.raises(ComeError, match="target_layers=4, not 3"):
        prune(prune_config(path, text, method="sleb", target_layers=3), checkpoint=ck, resume=True)


def test_a_one_shot_method_starts_over(tiny_dir, tmp_path, caplog):
    path, text = tiny_dir
    ck = tmp_path / "ck"
    first = prune(prune_config(path, text, method="shortgpt", target_layers=4), checkpoint=ck)
    with caplog.at_level("WARNING", logger="come.resume"):
        again = prune(prune_config(path, text, method="shortgpt", target_layers=4), checkpoint=ck, resume=True)
    assert "starting over" in caplog.text
    assert decisions(again.plan) == decisions(first.plan)


def test_checkpoint_is_a_hidden_sibling_of_the_output(tmp_path):
    assert checkpoint_for(tmp_path / "out") == tmp_path / ".out.resume"


def test_cli_resumes_from_the_checkpoint_beside_out_and_removes_it(tiny_dir, tmp_path, capsys):
    from come.cli import main

    path, text = tiny_dir
    out = tmp_path / "out"
    args = ["prune", str(path), "--calib-data", str(text), "--calib-samples", "4", "--calib-seq-len", "32",
            "--calib-batch-size", "2", "--device", "cpu", "--method", "sleb", "--target-layers", "3", "--out",
            str(out)]
    # the checkpoint a killed `come prune --out out` leaves: one step of the same settings
    ck = checkpoint_for(out)
    from come.cli import build_parser
    from come.cliargs import config_from_args

    cfg = config_from_args(__import__("come.config").config.PruneConfig, build_parser().parse_args(args))
    first = prune(cfg, checkpoint=ck)
    partial = json.loads((ck / PLAN_FILE).read_text())
    partial["steps"], partial["tree"] = partial["steps"][:1], []
    (ck / PLAN_FILE).write_text(json.dumps(partial))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    cap = capsys.readouterr()
    assert "resumed sleb from 1 steps at 5 layers" in cap.err
    assert "wrote" in cap.out and "Merge tree" not in cap.out  # one line, not the whole summary
    assert not ck.exists()
    from come.plan import Plan

    assert decisions(Plan.load(out)) == decisions(first.plan)
    assert main(["--quiet", *args, "--overwrite"]) == 0  # --quiet: no bars, no step messages
    err = capsys.readouterr().err
    assert "prune sleb" not in err and "calibration" not in err and "sleb step" not in err
