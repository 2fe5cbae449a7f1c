"""come.runstore: the run folder (OUT.partial -> OUT) that compare and distill resume from."""

import json
from pathlib import Path

import pytest

from come.errors import ComeError
from come.runstore import RunFolder


def test_interrupted_run_is_kept_refused_and_resumed(tmp_path):
    store = RunFolder(tmp_path / "out", "compare")
    stage = store.open(resume=False)
    assert stage == tmp_path / "out.partial" and stage.is_dir()
    store.write_json("rows/a.json", {"row": {"method": "a"}})
    try:
        raise KeyboardInterrupt  # the run is stopped after its first record
    except KeyboardInterrupt:
        store.abandon(keep=True)
    assert not store.out.exists() and (stage / "rows" / "a.json").is_file()

    again = RunFolder(tmp_path / "out", "compare")
    with pytest.raises(ComeError, match=r"interrupted compare left .*out.partial: pass --resume .* or --overwrite"):
        again.claim(resume=False, overwrite=False)
    again.claim(resume=True, overwrite=False)
    again.open(resume=True)
    assert [r["row"]["method"] for r in again.records(again.partial, "rows")] == ["a"]
    again.write_json("rows/b.json", {"row": {"method": "b"}})
    assert again.publish() == tmp_path / "out"
    assert not again.partial.exists()
    assert [r["row"]["method"] for f in again.earlier() for r in again.records(f, "rows")] == ["a", "b"]


def test_overwrite_discards_the_interrupted_run(tmp_path):
    store = RunFolder(tmp_path / "out")
    store.open(resume=False)
    store.write_json("rows/a.json", {})
    store.claim(resume=False, overwrite=True)  # allowed; open() starts afresh
    store.open(resume=False)
    assert list(store.partial.iterdir()) == []


def test_nothing_to_resume_from_leaves_no_trace(tmp_path):
    store = RunFolder(tmp_path / "out")
    store.open(resume=False)
    store.abandon(keep=False)
    assert list(tmp_path.iterdir()) == []


def test_publish_replaces_the_old_folder_only_when_the_new_one_is_in(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    store = RunFolder(out)
    store.open(resume=True)
    store.write_text("new.txt", "new")
    real = Path.rename

    def fail_new(self, target):  # the partial folder cannot be renamed into place (e.g. a full file system)
        if self == store.partial:
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", fail_new)
    with pytest.raises(OSError):
        store.publish()
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # the old folder is whole
    assert (store.partial / "new.txt").read_text() == "new"  # and the new one still resumable
    monkeypatch.setattr(Path, "rename", real)
    store.publish()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and not store.partial.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no folder left aside


def test_a_record_is_never_half_written(tmp_path, monkeypatch):
    store = RunFolder(tmp_path / "out")
    store.open(resume=False)
    store.write_json("state.json", {"step": 1})

    def crash(self, target):  # killed between writing the temporary and renaming it into place
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write_json("state.json", {"step": 2})
    monkeypatch.undo()
    assert json.loads((store.partial / "state.json").read_text()) == {"step": 1}
    assert (store.partial / ".state.json.tmp").exists()
    store.open(resume=True)  # the next run drops what the killed one was writing
    assert sorted(p.name for p in store.partial.iterdir()) == ["state.json"]


def test_a_staged_folder_replaces_the_committed_one_whole(tmp_path):
    store = RunFolder(tmp_path / "out")
    store.open(resume=False)
    assert store.committed("checkpoint", "state.json") is None
    tmp = store.begin("checkpoint")
    (tmp / "weights").write_text("1")
    (tmp / "state.json").write_text("{}")
    store.commit("checkpoint")
    tmp = store.begin("checkpoint")  # the next checkpoint, killed half-way: the committed one is untouched
    (tmp / "weights").write_text("2")
    done = store.committed("checkpoint", "state.json")
    assert done is not None and (done / "weights").read_text() == "1"
    (tmp / "state.json").write_text("{}")
    store.commit("checkpoint")
    assert (store.partial / "checkpoint" / "weights").read_text() == "2"
    assert sorted(p.name for p in store.partial.iterdir()) == ["checkpoint"]


def test_stale_temporaries_in_sub_folders_are_dropped(tmp_path):
    store = RunFolder(tmp_path / "out")
    store.open(resume=False)
    (store.partial / "methods" / ".sleb.tmp-dead").mkdir(parents=True)
    (store.partial / "rows").mkdir()
    (store.partial / "rows" / ".a.json.tmp").write_text("{")
    (store.partial / "rows" / "a.json").write_text("{}")
    store.open(resume=True)
    assert sorted(str(p.relative_to(store.partial)) for p in store.partial.rglob("*")) == [
        "methods", "rows", "rows/a.json"]


def test_an_unreadable_record_is_a_one_line_error(tmp_path):
    store = RunFolder(tmp_path / "out")
    store.open(resume=False)
    (store.partial / "rows").mkdir()
    (store.partial / "rows" / "a.json").write_text("{half")
    with pytest.raises(ComeError, match="cannot read .*a.json .*delete it, or pass --overwrite") as e:
        store.records(store.partial, "rows")
    assert "\n" not in str(e.value)
