"""The package's shape: no import cycle, plan operations independent of the methods, `import come` without torch,
and a plan-operation registry that refuses what it does not know."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import import_graph  # noqa: E402

from come.errors import ComeError  # noqa: E402


def fresh(code: str) -> str:
    """Run `code` in a new interpreter (nothing imported yet) and return what it prints."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_import_cycle():
    assert import_graph.cycles(import_graph.graph()) == []


def test_the_graph_sees_a_cycle(tmp_path):
    # the check above can fail: two modules that import each other inside functions are a cycle
    pkg = tmp_path / "come"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from come.b import g\n")
    (pkg / "b.py").write_text("from come import a\n")
    assert import_graph.cycles(import_graph.graph(tmp_path)) == [["come.a", "come.b"]]


def test_plan_and_ops_import_nothing_of_the_methods():
    g = import_graph.graph()
    for module in ("come.plan", "come.ops"):
        reach, todo = set(), [module]
        while todo:
            for dep in g[todo.pop()] - reach:
                reach.add(dep)
                todo.append(dep)
        assert not {m for m in reach if m == "come.methods" or m.startswith("come.methods.")}, module
    loaded = fresh("import sys, come.plan, come.ops; print(' '.join(sorted(sys.modules)))").split()
    assert "come.plan" in loaded and not [m for m in loaded if m.startswith("come.methods")]


def test_import_come_loads_neither_torch_nor_the_package():
    loaded = fresh("import sys, come; print(' '.join(sorted(sys.modules)))").split()
    assert "come" in loaded and "torch" not in loaded
    assert [m for m in loaded if m.startswith("come.")] == ["come.lazy"]  # the lazy loader alone


def test_import_come_cli_loads_no_torch():
    loaded = fresh("import sys, come.cli; print(' '.join(sorted(sys.modules)))").split()
    assert "come.cli" in loaded and "torch" not in loaded


def test_come_help_loads_no_torch():
    # the parser of every subcommand (what `come --help` and `come prune --help` build) without torch
    loaded = fresh("import sys\nfrom come.cli import build_parser\nbuild_parser()\n"
                   "print(' '.join(sorted(sys.modules)))").split()
    assert "come.cli" in loaded and "torch" not in loaded


def test_every_method_module_is_found_without_a_list():
    """The registry imports every module of come.methods on first use: a new method is one file there."""
    loaded = fresh("import sys\nfrom come.methods import METHODS\nlen(METHODS)\n"
                   "print(' '.join(m for m in sorted(sys.modules) if m.startswith('come.methods.')))").split()
    import pkgutil

    import come.methods

    assert {f"come.methods.{m.name}" for m in pkgutil.iter_modules(come.methods.__path__)} <= set(loaded)


def test_the_public_names_load_on_use():
    out = fresh("import importlib, come; importlib.import_module('come.prune'); from come import prune, Plan\n"
                "print(callable(prune), type(prune).__name__, Plan.__module__, come.__version__ != '')")
    assert out.split() == ["True", "function", "come.plan", "True"]  # come.prune is the function, as always


def test_an_op_is_registered_once():
    from come.ops import OPS, Op, register_op

    with pytest.raises(ValueError, match="'merge' is already registered"):
        register_op(Op("merge", OPS["merge"].fn))
    assert set(OPS) == {"merge", "drop", "rdsc", "wsum", "refit"}
    assert [name for name, op in OPS.items() if op.keeps_depth] == ["refit"]


def test_update_tree_refuses_an_unknown_op():
    from come.ops import initial_tree, update_tree

    tree = initial_tree(4)
    with pytest.raises(ComeError, match="unknown op 'fuse'"):
        update_tree(tree, {"op": "fuse", "layer": 0})
    assert tree == [[0], [1], [2], [3]]
    update_tree(tree, {"op": "merge", "layer": 1})
    update_tree(tree, {"op": "refit", "layer": 1, "tensors": {}})
    update_tree(tree, {"op": "drop", "layer": 0})
    assert tree == [[0, 1, 2], [3]]
