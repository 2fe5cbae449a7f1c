"""`--push-to-hub REPO` of `come prune`, `come apply` and `come distill`: the finished output folder, uploaded to a
Hugging Face Hub model repository through `huggingface_hub`.

`check_push` runs first, before any weights load: an offline environment, a missing token or a malformed repo id is
a one-line error within a second or two, not after an hour of pruning. `push` runs after the output folder is
published (`come.io`): the folder is complete and stays on disk whatever the upload does; a failed upload is a
one-line error that names it and the `hf upload` command that retries.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from come.errors import ComeError

_TRUE = ("1", "true", "yes", "on")  # how huggingface_hub reads HF_HUB_OFFLINE


def add_push_args(p: argparse.ArgumentParser) -> None:
    """--push-to-hub REPO and --private."""
    g = p.add_argument_group("publish")
    g.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="once --out is written, upload it to this Hugging Face Hub model repo (ORG/NAME or NAME; "
                   "created when absent); needs a token (`hf auth login` or HF_TOKEN) and HF_HUB_OFFLINE unset, "
                   "both checked before any weights load")
    g.add_argument("--private", action="store_true",
                   help="with --push-to-hub: create the repo private (a repo that exists keeps its visibility)")


def check_push(repo: str | None, private: bool = False) -> None:
    """A one-line ComeError, before any weights load, when `--push-to-hub REPO` could not upload: a malformed repo
    id, HF_HUB_OFFLINE set, no token. Reads no network."""
    if repo is None:
        if private:
            raise ComeError("--private goes with --push-to-hub REPO: without an upload there is no repo to make "
                            "private")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ComeError(f"--push-to-hub {repo!r} is not a Hub repo id (ORG/NAME or NAME): {first}") from None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise ComeError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it, or "
                        f"leave --push-to-hub out and upload the folder later with `hf upload {repo} OUT`")
    import huggingface_hub

    if not huggingface_hub.get_token():
        raise ComeError(f"--push-to-hub {repo}: no Hugging Face token found: run `hf auth login` or set HF_TOKEN "
                        "(a token with write access)")


def push(folder: str | Path, repo: str, private: bool = False) -> str:
    """Upload the output folder `folder` to the Hub model repo `repo` (created when absent, `private` then);
    returns the repo's address. A failure is a one-line ComeError: the folder stays as it is."""
    import huggingface_hub

    folder = Path(folder)
    api = huggingface_hub.HfApi()
    try:
        # not private: the Hub's default for the account (public unless an organisation says otherwise)
        url = api.create_repo(repo_id=repo, repo_type="model", private=True if private else None, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder),
                          commit_message=f"Upload {folder.name} (written by come)")
    except Exception as e:
        from come.io import describe_error

        raise ComeError(f"{folder} is written, but uploading it to {repo} failed ({describe_error(e)}): retry "
                        f"with `hf upload {repo} {folder}`") from e
    return str(url) if url else f"https://huggingface.co/{repo}"


def push_and_print(folder: str | Path, repo: str | None, private: bool = False) -> None:
    """`push` when `repo` is given, holding the output's lock (no other run replaces the folder while it
    uploads), and one line saying where it went."""
    if repo is None:
        return
    from come.io import output_lock

    with output_lock(folder):
        url = push(folder, repo, private)
    print(f"uploaded {folder} to {url}")
