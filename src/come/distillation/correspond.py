"""Correspondences between the student's layers and the teacher's, read from the merge tree of the plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from come.errors import ComeError
from come.models import get_adapter
from come.plan import Plan


@dataclass(frozen=True)
class Correspondence:
    """Student layer `layer` stands for the teacher's layers `first`..`last` (inclusive)."""

    layer: int
    first: int
    last: int

    @property
    def merged(self) -> bool:
        return self.last > self.first

    @property
    def name(self) -> str:
        return f"L{self.layer}" if not self.merged else f"L{self.layer}({self.first}-{self.last})"


def correspondences(tree: list[list[int]]) -> list[Correspondence]:
    """One correspondence per new layer; refuses a tree that is not an ordered partition into contiguous blocks."""
    out, expect = [], 0
    for j, block in enumerate(tree):
        if not block or list(block) != list(range(block[0], block[0] + len(block))) or block[0] != expect:
            raise ComeError(f"merge tree entry {j} ({block}) is not the next contiguous block of original layers: "
                            "pass a plan written by `come prune`")
        out.append(Correspondence(j, block[0], block[-1]))
        expect = block[-1] + 1
    return out


def check_pair(plan: Plan, teacher, student) -> list[Correspondence]:
    """The correspondences, after checking that `student` is `teacher` pruned by `plan` (counts and shapes)."""
    corr = correspondences(plan.tree)
    t, s = get_adapter(teacher), get_adapter(student)
    if t.num_layers != plan.base_model["num_layers"] or corr[-1].last + 1 != t.num_layers:
        raise ComeError(f"the student's plan was made for a {plan.base_model['num_layers']}-layer model covering "
                        f"{corr[-1].last + 1} layers, but the teacher has {t.num_layers}: pass the original model "
                        f"({plan.base_model.get('name')}) as --teacher")
    if s.num_layers != len(corr):
        raise ComeError(f"the student has {s.num_layers} layers but its plan has {len(corr)}: "
                        "pass the folder `come prune` wrote, unmodified")
    for key in ("hidden_size", "vocab_size"):
        a, b = getattr(teacher.config, key, None), getattr(student.config, key, None)
        if a != b:
            raise ComeError(f"teacher and student differ in {key} ({a} vs {b}): pass the original model as --teacher")
    for c in corr:
        ts = {k: v.shape for k, v in t.layers[c.first].state_dict().items()}
        ss = {k: v.shape for k, v in s.layers[c.layer].state_dict().items()}
        if ts != ss:
            raise ComeError(f"student layer {c.layer} does not have the shapes of teacher layer {c.first}: "
                            "pass the original model as --teacher")
    if not torch.equal(t.embed_tokens().weight.cpu(), s.embed_tokens().weight.cpu()):
        raise ComeError("teacher and student have different token embeddings: pass the original model as --teacher")
    return corr


def warn_unrelated_teacher(corr: list[Correspondence], teacher, student) -> bool:
    """Warn (and return True) when no layer the plan kept as it was shares a single tensor with the teacher's
    layer it came from: the embeddings match, but the decoder layers are another model's (another fine-tune of
    the same base, say), so the student would be distilled towards a model it was not pruned from."""
    t, s = get_adapter(teacher), get_adapter(student)
    kept = [c for c in corr if not c.merged]
    if not kept:
        return False
    for c in kept:
        ts, ss = t.layers[c.first].state_dict(), s.layers[c.layer].state_dict()
        if any(torch.equal(ts[k].cpu(), v.cpu()) for k, v in ss.items() if k in ts):
            return False
    import sys

    print(f"come: warning: the teacher's decoder layers all differ from the student's source (none of the "
          f"{len(kept)} layers the plan kept unchanged matches its teacher layer), although the embeddings match: "
          "pass the model the student was pruned from as --teacher", file=sys.stderr)
    return True
