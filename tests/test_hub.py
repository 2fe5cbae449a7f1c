"""`--push-to-hub REPO` (come prune, apply, distill): refused in one line before any weights load when it could not
upload; otherwise the published output folder goes to `HfApi().create_repo` + `upload_folder`. No network: the
Hub client is replaced by a recorder."""

import time
from pathlib import Path

import huggingface_hub
import pytest

from come.cli import main

LLAMA_8B = str(Path(__file__).parent / "data" / "configs" / "llama-3-8b")  # a config without weights
PUSHING = ("prune", "apply", "distill")


@pytest.fixture
def run(capsys):
    def _run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err.strip().splitlines()

    return _run


@pytest.fixture
def no_weights(monkeypatch):
    """Reaching a model's weights fails the test (where each command calls it; the modules imported first, so
    that none keeps the stand-in beyond this test)."""
    import importlib

    def fail(*a, **k):
        pytest.fail("weights loaded before refusing")

    modules = [importlib.import_module(n) for n in ("come.models", "come.prune", "come.distillation.train")]
    for module in modules:  # all imported before any is patched (`come.prune` is also a function's name)
        monkeypatch.setattr(module, "load_model", fail)


class RecordingApi:
    """HfApi's two calls that `come.hub.push` makes, recorded with what the folder held at the time."""

    calls: list = []
    fail: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail is not None:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", repo_id, folder, files, kwargs))
        return f"https://huggingface.co/{repo_id}/commit/0"


@pytest.fixture
def hub(monkeypatch):
    """Online with a token, the Hub client recording instead of uploading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setattr(RecordingApi, "fail", None)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return RecordingApi


def argv_of(command, tmp_path, *extra):
    """A command line that would load weights (of an 8B config without any: reaching them fails the test)."""
    if command == "prune":
        return ["prune", LLAMA_8B, "--target-layers", 24, "--out", tmp_path / "o", *extra]
    if command == "apply":
        return ["apply", tmp_path / "no-plan", "--out", tmp_path / "o", *extra]
    return ["distill", "--student", tmp_path / "no-student", "--steps", 1, "--out", tmp_path / "o", *extra]


@pytest.mark.parametrize("command", PUSHING)
@pytest.mark.parametrize("setting,needle", [
    ("offline", "HF_HUB_OFFLINE is set, so nothing can be uploaded"),
    ("no token", "no Hugging Face token found: run `hf auth login` or set HF_TOKEN"),
    ("bad repo", "--push-to-hub 'me/a/b' is not a Hub repo id (ORG/NAME or NAME)"),
])
def test_a_push_that_could_not_upload_is_refused_first_and_fast(run, monkeypatch, tmp_path, no_weights, command,
                                                                setting, needle):
    """Before the plan, the student or the model's config is even read (all missing here), in one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if setting == "offline" else "0")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None if setting == "no token" else "hf_x")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("the Hub was reached"))
    repo = "me/a/b" if setting == "bad repo" else "me/pruned"
    t0 = time.perf_counter()
    code, _, err = run(*argv_of(command, tmp_path, "--push-to-hub", repo))
    assert time.perf_counter() - t0 < 2  # seconds: nothing but the environment is read
    assert code == 2 and len(err) == 1 and err[0].startswith("come: error: --push-to-hub") and needle in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", PUSHING)
def test_private_without_a_repo_is_refused(run, tmp_path, no_weights, command):
    code, _, err = run(*argv_of(command, tmp_path, "--private"))
    assert code == 2 and err == ["come: error: --private goes with --push-to-hub REPO: without an upload there is "
                                 "no repo to make private"]


def test_without_push_to_hub_the_hub_is_never_reached(run, tiny_dir, tmp_path, hub):
    path, text = tiny_dir
    code, _, err = run(*prune_argv(path, text, tmp_path / "o"))
    assert code == 0, err
    assert hub.calls == []


def prune_argv(path, text, out, *extra):
    return ["prune", path, "--target-layers", 4, "--calib-data", text, "--calib-samples", 2, "--calib-seq-len", 32,
            "--device", "cpu", "--out", out, *extra]


def assert_uploaded(hub, repo, out, private, printed):
    """One create_repo and one upload_folder of the published folder `out`, holding the weights and the card."""
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    _, created, kwargs = hub.calls[0]
    assert created == repo and kwargs["exist_ok"] is True and kwargs["repo_type"] == "model"
    assert kwargs["private"] is (True if private else None)
    _, uploaded, folder, files, kwargs = hub.calls[1]
    assert uploaded == repo and kwargs["repo_type"] == "model"
    assert folder == Path(out) and folder.is_dir()  # the published folder, not a temporary beside it
    assert {"model.safetensors", "README.md", "config.json", "come_plan.json"} <= set(files)
    assert files == {p.relative_to(out).as_posix(): p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}
    assert b"come" in files["README.md"]
    assert f"uploaded {out} to https://huggingface.co/{repo}" in printed


@pytest.mark.parametrize("private", [False, True])
def test_prune_uploads_the_written_folder(run, tiny_dir, tmp_path, hub, private):
    path, text = tiny_dir
    out = tmp_path / "o"
    code, printed, err = run(*prune_argv(path, text, out, "--push-to-hub", "me/tiny-4",
                                         *(["--private"] if private else [])))
    assert code == 0, err
    assert "recipe.yaml" in hub.calls[1][3]
    assert_uploaded(hub, "me/tiny-4", out, private, printed)


def test_apply_and_distill_upload_their_folders(run, tiny_dir, tmp_path, hub):
    path, text = tiny_dir
    pruned = tmp_path / "pruned"
    assert run(*prune_argv(path, text, pruned))[0] == 0
    code, printed, err = run("apply", pruned, "--model", path, "--out", tmp_path / "replayed", "--push-to-hub",
                             "me/replayed")
    assert code == 0, err
    assert_uploaded(hub, "me/replayed", tmp_path / "replayed", False, printed)
    hub.calls.clear()
    train = tmp_path / "train.txt"
    train.write_text(text.read_text())
    code, printed, err = run("distill", "--student", pruned, "--teacher", path, "--train-data", train,
                             "--train-seq-len", 32, "--train-batch-size", 2, "--steps", 1, "--stage", "global",
                             "--device", "cpu", "--out", tmp_path / "distilled", "--push-to-hub", "org/distilled")
    assert code == 0, err
    assert_uploaded(hub, "org/distilled", tmp_path / "distilled", False, printed)
    assert "distill_summary.json" in hub.calls[1][3]


def test_a_failed_upload_keeps_the_folder_and_says_how_to_retry(run, tiny_dir, tmp_path, hub):
    path, text = tiny_dir
    out = tmp_path / "o"
    hub.fail = OSError("Connection refused")
    code, printed, err = run(*prune_argv(path, text, out, "--push-to-hub", "me/tiny-4"))
    errors = [line for line in err if line.startswith("come: error:")]  # the others: progress bars
    assert code == 2 and errors == [err[-1]], err
    assert err[-1] == (f"come: error: {out} is written, but uploading it to me/tiny-4 failed (Connection refused): "
                      f"retry with `hf upload me/tiny-4 {out}`")
    assert f"wrote {out}" in printed and (out / "model.safetensors").is_file()
