"""The plan file: JSON and its sidecar tensors written and read back, what `Plan.load` refuses, and `Plan.prefix`.

How `come apply` validates a plan's steps before touching the model: tests/test_reliability.py.
"""

import json

import pytest
import torch
from conftest import SAMPLE_TEXT, prune_config, same_weights, tiny_model, tiny_tokenizer

from come import apply_plan, prune
from come.errors import ComeError
from come.models import load_model
from come.plan import PLAN_FILE, PLAN_FORMAT, TENSORS_FILE, Plan


@pytest.fixture(scope="module")
def refit_plan(tmp_path_factory):
    """A come-plus plan of a tiny Llama, 6 -> 4 layers: merges, each followed by a re-fit that carries tensors."""
    root = tmp_path_factory.mktemp("plan")
    path = root / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    text = root / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    plan = prune(prune_config(path, text, method="come-plus", target_layers=4)).plan
    assert [st["op"] for st in plan.steps] == ["merge", "refit", "merge", "refit"] and plan.tensors
    return plan


def tensor_keys(steps) -> set[str]:
    return {k for st in steps for k in st.get("tensors", {}).values()}


def test_save_and_load_give_the_same_plan_and_tensors(refit_plan, tmp_path):
    refit_plan.save(tmp_path / PLAN_FILE)
    assert (tmp_path / TENSORS_FILE).exists()
    data = json.loads((tmp_path / PLAN_FILE).read_text())
    assert data["format"] == PLAN_FORMAT and "tensors" not in data  # tensors live in the sidecar, never the JSON
    back = Plan.load(tmp_path)  # a folder or the file itself
    assert back.to_json() == refit_plan.to_json() == Plan.load(tmp_path / PLAN_FILE).to_json()
    assert back.tensors.keys() == refit_plan.tensors.keys() == tensor_keys(refit_plan.steps)
    for k, t in refit_plan.tensors.items():
        assert back.tensors[k].dtype == t.dtype and torch.equal(back.tensors[k], t)


def test_a_plan_without_tensors_writes_no_sidecar_and_json_cannot_smuggle_them(refit_plan, tmp_path):
    plain = Plan.load_dict({**json.loads(refit_plan.to_json()), "tensors": {"step2.o_proj": [1.0]}})
    assert plain.tensors == {}  # only the safetensors sidecar carries tensors
    plain.save(tmp_path / PLAN_FILE)
    assert not (tmp_path / TENSORS_FILE).exists()
    assert Plan.load(tmp_path).to_json() == refit_plan.to_json()


def test_load_refuses_what_is_not_a_plan_in_one_line(tmp_path):
    cases = []
    with pytest.raises(ComeError, match="no plan at .*: pass a folder written by `come prune`") as e:
        Plan.load(tmp_path / "nowhere")
    cases.append(e)
    (tmp_path / PLAN_FILE).write_text('{"format": "come-plan/1",')
    with pytest.raises(ComeError, match=r"is not valid JSON \(.* at line 1\)") as e:
        Plan.load(tmp_path)
    cases.append(e)
    (tmp_path / PLAN_FILE).write_text(json.dumps({"format": "other/2", "method": "come"}))
    wrong = r"has format 'other/2', expected 'come-plan/1': pass a plan written by come"
    with pytest.raises(ComeError, match=wrong) as e:
        Plan.load(tmp_path)
    cases.append(e)
    with pytest.raises(ComeError, match="has format 'list'") as e:
        Plan.load_dict([1, 2])
    cases.append(e)
    assert all("\n" not in str(c.value) for c in cases)


def test_prefix_cuts_at_the_depth_with_its_re_fits_and_their_tensors(refit_plan):
    five = refit_plan.prefix(5)
    assert [st["op"] for st in five.steps] == ["merge", "refit"]  # the re-fit after the merge belongs to 5 layers
    assert five.num_layers == 5 and sorted(i for b in five.tree for i in b) == list(range(6))
    assert five.tensors.keys() == tensor_keys(five.steps) and five.tensors.keys() < refit_plan.tensors.keys()
    assert refit_plan.prefix(4).to_json() == refit_plan.to_json()
    six = refit_plan.prefix(6)
    assert six.steps == [] and six.tree == [[i] for i in range(6)] and six.tensors == {}
    with pytest.raises(ComeError, match="cannot cut a 6-layer model's plan at 7 layers"):
        refit_plan.prefix(7)
    with pytest.raises(ComeError, match=r"this plan never has 3 layers \(it ends at 4\)"):
        refit_plan.prefix(3)


def test_refit_plan_tensors_keep_the_model_dtype_and_replay_exactly(tiny_dir):
    path, text = tiny_dir
    res = prune(prune_config(path, text, method="come-plus", target_layers=4, dtype="bfloat16"))
    assert res.plan.tensors and all(t.dtype == torch.bfloat16 and t.device.type == "cpu"
                                    for t in res.plan.tensors.values())
    fresh, _, _ = load_model(str(path), "bfloat16", "cpu")
    apply_plan(fresh, res.plan)
    assert same_weights(fresh, res.model)


def test_plan_prefix_replays_the_shallower_depth(tiny_dir):
    path, text = tiny_dir
    deep = prune(prune_config(path, text, method="come-plus", target_layers=4)).plan
    shallow = prune(prune_config(path, text, method="come-plus", target_layers=5))
    cut = deep.prefix(5)
    assert cut.tree == shallow.plan.tree
    assert [st["op"] for st in cut.steps] == [st["op"] for st in shallow.plan.steps]
    fresh, _, _ = load_model(str(path), "float32", "cpu")
    apply_plan(fresh, cut)
    assert same_weights(fresh, shallow.model)
