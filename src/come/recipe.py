"""Recipes: a YAML file of the settings of `come prune`, `compare`, `distill` or `compress` (`--config FILE`).

A recipe's keys are the fields of the command's config dataclass (`PruneConfig`, `CompareConfig`,
`DistillConfig`, `CompressConfig`; `calib` nested as in `CalibConfig`), plus `out` and an optional `command`. The
file fills the command line's defaults, so a flag given on the command line wins over the file. `--print-config`
writes the effective recipe; the plan records it (`settings.recipe`).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import yaml

from come import cliargs
from come.config import FORMER_FIELDS, RETIRED_AFTER, CalibConfig, PruneConfig, retired_settings
from come.errors import ComeError

COMMANDS = ("prune", "compare", "distill", "compress")
RUN_ONLY = ("progress", "overwrite", "resume", "stop_after")  # how a run goes, not what it makes: never in a recipe


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few settings; anything this large is not one
MAX_VALUES = 100_000  # values of a recipe with its aliases expanded
MAX_ALIASES = 100  # YAML aliases a recipe may use: a few nested ones (a "billion laughs") would fill the memory


class RecipeLoader(yaml.SafeLoader):
    """yaml's SafeLoader (plain data, never objects) that refuses more than MAX_ALIASES aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_ALIASES:
                raise ComeError(f"--config {self.name}: more than {MAX_ALIASES} YAML aliases (*name): a recipe "
                                "needs none; write the values out")
        return super().compose_node(parent, index)


def _expanded_size(obj, memo: dict) -> int:
    """How many values `obj` holds with its YAML aliases expanded (shared objects counted once per use, each
    computed once: a "billion laughs" is counted, not built)."""
    if id(obj) in memo:
        return memo[id(obj)]
    items = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    size = 1 + sum(_expanded_size(v, memo) for v in items)
    memo[id(obj)] = size
    return size


def config_class(command: str):
    # CompareConfig and DistillConfig live in modules that import this one (they write recipes and cards)
    if command == "prune":
        return PruneConfig
    if command == "compare":
        from come.compare import CompareConfig

        return CompareConfig
    if command == "compress":
        from come.compress_config import CompressConfig

        return CompressConfig
    from come.distillation.config import DistillConfig

    return DistillConfig


def _fields(command: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_class(command)) if f.name not in RUN_ONLY}


def valid_keys(command: str) -> list[str]:
    """Every key a recipe of `command` may hold (calib's as calib.KEY)."""
    keys = []
    for name in _fields(command):
        if name == "calib":
            keys += [f"calib.{f.name}" for f in dataclasses.fields(CalibConfig)]
        else:
            keys.append(name)
    return keys + (["out"] if "out" not in keys else []) + ["command"]


def load(path: str | Path, command: str) -> dict:
    """The recipe in `path`, checked against `command`'s settings: unknown keys and wrong types are refused."""
    path = Path(path).expanduser()
    try:
        if path.is_file() and path.stat().st_size > MAX_RECIPE_BYTES:
            raise ComeError(f"--config {path} is larger than a recipe ({path.stat().st_size:,} bytes, at most "
                            f"{MAX_RECIPE_BYTES:,}): pass a recipe file")
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=RecipeLoader)
    except OSError as e:
        raise ComeError(f"--config {path}: cannot read it ({e.strerror}): pass a recipe file") from None
    except UnicodeDecodeError:
        raise ComeError(f"--config {path} is not a text file (not UTF-8): pass a YAML recipe") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ComeError(f"--config {path} is not valid YAML{at}: fix the file (see recipes/ for examples)") from None
    if data is None:
        data = {}
    if _expanded_size(data, {}) > MAX_VALUES:
        raise ComeError(f"--config {path}: its values, aliases expanded, hold more than {MAX_VALUES:,} items: a "
                        "recipe is a few settings; write them out")
    if not isinstance(data, dict):
        raise ComeError(f"--config {path} must be a mapping of settings (key: value), got {type(data).__name__}")
    wanted = data.get("command", command)
    if wanted != command:
        raise ComeError(f"--config {path} is a `come {wanted}` recipe: run `come {wanted} --config {path}`")
    flat = flatten(data)
    valid = valid_keys(command)
    if command == "prune":
        flat = _options_beside(flat, valid, path)
    unknown = [k for k in flat if k not in valid]
    if unknown:
        from come.names import did_you_mean

        hint = did_you_mean(unknown[0], valid) if len(unknown) == 1 else ""
        raise ComeError(f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}; "
                        f"valid keys for `come {command}`: {', '.join(valid)}")
    for key, value in flat.items():
        _check_type(command, key, value, path)
    return flat


def _options_beside(flat: dict, valid: list[str], path) -> dict:
    """A prune recipe's keys that are options of its method, into `method_options` (a recipe of an older version
    held the CoMe family's beside the other settings); those of an older version's PruneConfig at their default
    are dropped, another value of one that left is refused, naming where it went."""
    names = []
    if any(k not in valid for k in flat):
        from come.methods import get_method  # loads torch: only for a recipe that holds such keys

        method = get_method(flat.get("method", "come"))
        names = [f.name for f in dataclasses.fields(method.options)]
    moved, out = {}, {}
    for key, value in flat.items():
        if key in valid:
            out[key] = value
        elif key in names:
            moved[key] = value
        elif key in FORMER_FIELDS and value == FORMER_FIELDS[key][0]:
            continue
        elif key in FORMER_FIELDS:
            gone = retired_settings({key: value}) or [f"{key}={value} (an option of other methods)"]
            raise ComeError(f"--config {path}: {gone[0]}: a setting come offered until commit {RETIRED_AFTER}; "
                            "drop it from the recipe")
        else:
            out[key] = value  # refused below as unknown
    if moved:
        out["method_options"] = {**moved, **(flat.get("method_options") or {})}
    return out


def flatten(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        if key == "calib" and isinstance(value, dict):
            out.update({f"calib.{k}": v for k, v in value.items()})
        else:
            out[str(key)] = value
    return out


def _annotation(command: str, key: str) -> str:
    if key.startswith("calib."):
        return {f.name: f.type for f in dataclasses.fields(CalibConfig)}[key[len("calib."):]]
    if key in ("out", "command"):
        return "str | None"
    return str(_fields(command)[key].type)


def _check_type(command: str, key: str, value, path) -> None:
    """A value of the type the dataclass field declares (int, float, str, bool, dict, list; None when allowed)."""
    ann = _annotation(command, key)
    kinds = {part.strip().split("[")[0] for part in ann.split("|")}
    ok = {"None": value is None, "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool), "str": isinstance(value, str),
          "bool": isinstance(value, bool), "dict": isinstance(value, dict), "list": isinstance(value, list),
          "CalibConfig": isinstance(value, dict)}
    if not any(ok.get(k, False) for k in kinds):
        raise ComeError(f"--config {path}: {key} must be {ann.replace('None', 'null')}, got {value!r}")
    cliargs.check_finite(f"--config {path}: {key}", value)


# `out` of a command whose config has no such field (prune): the --out of come.cli's add_output_args
OUT_FLAG = cliargs.Flag("out", "out", "--out", "store", str, None)


def flag_of(command: str, key: str) -> cliargs.Flag:
    """The flag of recipe key `key`: its config field's (come.cliargs; every recipe key has one)."""
    if key.startswith("calib."):
        spec = cliargs.find(CalibConfig, key[len("calib."):])
    else:
        spec = cliargs.find(config_class(command), key)
        if spec is None and key == "out":
            spec = OUT_FLAG
    if spec is None:
        raise ComeError(f"recipe key {key} of `come {command}` has no flag")  # a config field without metadata
    return spec


def to_dests(command: str, flat: dict) -> dict:
    """Recipe keys -> the command line's argument names (what `set_defaults` takes)."""
    out = {}
    for key, value in flat.items():
        if key != "command":
            out.update(flag_of(command, key).dests(value))
    return out


def apply(command: str, flat: dict, parser, given) -> None:
    """Make the recipe `flat` the defaults of `parser` (the subcommand's), so flags given on the command line
    win; of an exclusive group (e.g. target_layers / sparsity) the file's settings are dropped when a flag gives
    one of them. `given`: the namespace parsed without the recipe."""
    dests = to_dests(command, flat)
    groups: dict[str, list[cliargs.Flag]] = {}
    for spec in cliargs.flags(config_class(command)):
        if spec.exclusive is not None:
            groups.setdefault(spec.exclusive, []).append(spec)
    for group in groups.values():
        if any(getattr(given, spec.dest, None) is not None for spec in group):
            for spec in group:
                dests.pop(spec.dest, None)
    parser.set_defaults(**dests)


def of(cfg, out: str | None = None) -> dict:
    """The recipe of a config dataclass (what `--print-config` writes and the plan records)."""
    command = {"PruneConfig": "prune", "CompareConfig": "compare", "DistillConfig": "distill",
               "CompressConfig": "compress"}[type(cfg).__name__]
    data = {"command": command}
    for name in _fields(command):
        value = getattr(cfg, name)
        data[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    if out is not None and "out" not in data:
        data["out"] = out
    return data


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)


def command_line(recipe: dict, out: str = "OUT") -> str:
    """The `come ...` flag line that gives the same settings as `recipe` (settings at their defaults left out)."""
    command = recipe.get("command", "prune")
    cls = config_class(command)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else
                (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                for f in dataclasses.fields(cls)}
    calib_defaults = dataclasses.asdict(CalibConfig())
    flat = flatten({k: v for k, v in recipe.items() if k != "command"})
    words = ["come", command]
    for spec in cliargs.flags(cls):
        if spec.flag is None and spec.name in flat:  # a positional argument (the model) comes first
            words += spec.words(flat.pop(spec.name))
    flat["out"] = out
    for key, value in flat.items():
        if key.startswith("calib."):
            if value == calib_defaults[key[len("calib."):]]:
                continue
        elif key in defaults and value == defaults[key] or value is None:
            continue
        if key == "method_options":
            words += _option_words(recipe.get("method", "come"), value, flag_of(command, key))
            continue
        words += flag_of(command, key).words(value)
    return shlex.join(words)


def _option_words(method: str, options: dict, option_flag: cliargs.Flag) -> list[str]:
    """The words of the options that differ from the method's defaults: each option's own flag (`--grid 10`);
    --option KEY=VALUE for what the method does not declare (or an unknown method)."""
    from come.methods import get_method  # loads torch: only when a recipe's method options are written out

    try:
        declared = {spec.name: spec for spec in cliargs.flags(get_method(method).options)}
    except ComeError:
        declared = {}
    words, rest = [], {}
    for key, value in (options or {}).items():
        spec = declared.get(key)
        if spec is None:
            rest[key] = value
        elif value != spec.default:
            words += spec.words(value)
    return words + option_flag.words(rest)
