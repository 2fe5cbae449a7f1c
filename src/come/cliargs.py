"""Command-line flags from the config dataclasses: one road from `come` flags to the settings objects.

A dataclass field is a flag when its metadata has a `help`; the field is then the one place of the flag's
default, type, choices and help text. `add_config_args` puts a class's flags on a parser, `config_from_args`
builds the config from the parsed flags, and `Flag.dests` / `Flag.words` turn a config value back into parser
defaults (recipes) or command-line words (the `come ...` line of a model card).

Metadata keys of a field (all optional but `help`):

  help        the help text, or a function returning it (for lists known only when the parser is built)
  flag        the option string; default: --NAME (underscores as dashes), --PREFIX-NAME under a `prefix`
  aliases     older option strings that still work for one release; each use prints a one-line note naming the
              new flag on stderr
  choices     the allowed values; another is refused with a one-line error (on the command line by the flag, in
              `validate` by `check_choices`)
  group       the title of the argument group the flag is listed under in --help
  exclusive   the name of a mutually exclusive group (e.g. target_layers and sparsity)
  positional  a positional argument (with `nargs`, e.g. "?" when a recipe may give it instead)
  metavar     the value's name in --help
  repeat      the flag may be given several times; its values are collected in a list
  type        what argparse converts each word with, instead of the one the field's type gives (e.g. str, to
              leave a comma list to `parse`)
  parse       a function of the parsed value (a string, a list of strings) to the field's value
  format      its inverse: the field's value to what the command line gives (recipes, printed command lines)
  nested      on a field whose type is a config dataclass: that class's flags stand for the field
  more        the flag is listed by --help-all only, not by --help (the front door shows what most runs need)
  options_of  on the field holding a method's options: a function returning (a line naming every method, the flags
              of every method's options: come.methods.option_flags). They load the methods (and torch), so they
              join the parser only when a word on the command line needs them or --help-all lists them; the given
              ones fill the field.

Types: int, float and str (Optional or not) are parsed as such; a bool is a switch (store_true; a True default
needs a flag --no-NAME, which stores False); list[int | float | str] is a comma list.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from come.errors import ComeError

_quiet_aliases = False


@contextlib.contextmanager
def quiet_aliases():
    """No deprecation notes inside: for parsing the same command line a second time (a --config recipe)."""
    global _quiet_aliases
    before, _quiet_aliases = _quiet_aliases, True
    try:
        yield
    finally:
        _quiet_aliases = before


@dataclass(frozen=True)
class Flag:
    """One flag of a config field, as `add_config_args` builds it from the field's metadata."""

    name: str  # the field
    dest: str  # the parsed namespace's attribute (argparse's: from the option string)
    flag: str | None  # the option string; None for a positional argument
    kind: str  # store | switch | append | nested
    type: Callable | None  # what argparse converts each word with
    default: Any
    help: str | Callable[[], str] = ""
    aliases: tuple[str, ...] = ()
    choices: tuple | None = None
    group: str | None = None
    exclusive: str | None = None
    metavar: str | None = None
    nargs: str | None = None
    parse: Callable | None = None
    format: Callable | None = None
    negated: bool = False  # a --no-NAME switch of a bool field whose default is True
    config: type | None = None  # kind nested: the config dataclass
    more: bool = False  # listed by --help-all only
    options_of: Callable[[], tuple[str, tuple]] | None = None  # the methods' options (see the module's doc)

    @property
    def shown(self) -> str:
        """How the flag is named in messages: --NAME, or the positional argument's NAME in capitals."""
        return self.flag or self.name.upper()

    def value(self, raw):
        """The field's value of what the parser gave."""
        if raw is None and self.kind == "append":  # the flag not given
            return copy.deepcopy(self.default)
        if self.negated:
            return not raw
        return self.parse(raw) if self.parse is not None and raw is not None else raw

    def raw(self, value):
        """What the parser gives for the field's value `value` (the inverse of `value`)."""
        if self.negated:
            return not value
        return self.format(value) if self.format is not None and value is not None else value

    def dests(self, value) -> dict:
        """The parser defaults that give the field `value` (how a recipe fills the command line)."""
        return {self.dest: self.raw(value)}

    def words(self, value) -> list[str]:
        """The command-line words that give the field `value` (an empty list for an unset switch or None)."""
        raw = self.raw(value)
        if raw is None or raw is False:
            return []
        if self.kind == "switch":
            return [self.flag]
        if self.flag is None:
            return [_word(raw)]
        if self.kind == "append":
            return [w for item in raw for w in (self.flag, _word(item))]
        return [self.flag, _word(raw)]


def _word(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _strip_optional(tp):
    """The type without None (X | None -> X); a union of several other types reads as str."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return tp


def _comma_list(item_type: Callable) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [item_type(x.strip()) for x in text.split(",") if x.strip()]

    parse.__name__ = f"comma list of {getattr(item_type, '__name__', 'values')}"  # argparse names it in errors
    return parse


@functools.cache
def flags(cls: type, prefix: str = "") -> tuple[Flag, ...]:
    """The flags of config dataclass `cls`, in field order (fields without a `help` are not flags)."""
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata or f.metadata.get("nested")]
    hints = typing.get_type_hints(cls) if fields else {}
    out = []
    for f in fields:
        meta = f.metadata
        tp = _strip_optional(hints[f.name])
        default = _field_default(f)
        if meta.get("nested"):
            out.append(Flag(f.name, f.name, None, "nested", None, default, config=tp))
            continue
        positional = bool(meta.get("positional"))
        flag = None if positional else meta.get("flag") or "--" + (f"{prefix}-" if prefix else "") + \
            f.name.replace("_", "-")
        dest = f.name if positional else flag.lstrip("-").replace("-", "_")
        kind, negated = "store", False
        item = (typing.get_args(tp) or (str,))[0] if typing.get_origin(tp) is list else tp
        item = item if item in (int, float, str) else str
        converter = item
        if tp is bool:
            kind, converter, negated = "switch", None, default is True
            if negated and not flag.startswith("--no-"):
                raise TypeError(f"{cls.__name__}.{f.name}: a switch whose default is True needs a --no-NAME flag")
        elif meta.get("repeat"):
            kind = "append"  # each word one item
        elif typing.get_origin(tp) is list:
            converter = _comma_list(item)
        converter = meta.get("type", converter)
        out.append(Flag(
            name=f.name, dest=dest, flag=flag, kind=kind, type=converter, default=default, help=meta["help"],
            aliases=tuple(meta.get("aliases", ())), choices=tuple(meta["choices"]) if "choices" in meta else None,
            group=meta.get("group"), exclusive=meta.get("exclusive"), metavar=meta.get("metavar"),
            nargs=meta.get("nargs"), parse=meta.get("parse"), format=meta.get("format"), negated=negated,
            more=bool(meta.get("more")), options_of=meta.get("options_of")))
    return tuple(out)


def find(cls: type, name: str, prefix: str = "") -> Flag | None:
    """The flag of field `name` of `cls`, or None when that field has none."""
    return next((f for f in flags(cls, prefix) if f.name == name), None)


def flag_name(cls: type, name: str, prefix: str = "") -> str:
    """The option string of field `name` (for error messages)."""
    spec = find(cls, name, prefix)
    return spec.shown if spec is not None else "--" + name.replace("_", "-")


def check_choice(flag: str, choices: tuple | None, value) -> None:
    """A one-line ComeError when `value` (or an item of a list) is not one of `choices` (None: anything goes)."""
    if choices is None or value is None:
        return
    for v in value if isinstance(value, list) else [value]:
        if v not in choices:
            raise ComeError(f"{flag} must be one of {', '.join(map(str, choices))}, got {v!r}")


def check_choices(cfg, skip: Iterable[str] = ()) -> None:
    """A one-line ComeError for a field of `cfg` outside its flag's choices (values that did not come from the
    command line: the Python API, a recipe); `skip`: fields the caller checks itself."""
    for spec in flags(type(cfg)):
        if spec.kind != "nested" and spec.name not in skip:
            check_choice(spec.shown, spec.choices, getattr(cfg, spec.name))


def check_finite(flag: str, value) -> None:
    """A one-line ComeError for a NaN or infinite number (or list item): no setting means anything with one."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ComeError(f"{flag} must be a finite number, got {v}")


class ConfigAction(argparse.Action):
    """Stores a config flag's value: refuses a value outside its choices with a one-line ComeError, and notes on
    stderr that a deprecated alias was used."""

    def __init__(self, option_strings, dest, kind="store", choices_=None, new_flag=None, **kwargs):
        if kind == "switch":
            kwargs.update(nargs=0, type=None, metavar=None)
        self.kind, self.allowed, self.new_flag = kind, choices_, new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.new_flag is not None and not _quiet_aliases:
            print(f"{parser.prog}: warning: {option_string} is deprecated and goes in the next release: use "
                  f"{self.new_flag}", file=sys.stderr)
        if values is not self.default:  # a positional argument left out gets its default
            name = self.new_flag or (self.option_strings[0] if self.option_strings else self.dest.upper())
            check_choice(name, self.allowed, values)
            check_finite(name, values)
        if self.kind == "switch":
            values = True
        elif self.kind == "append":
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def _help_text(spec: Flag) -> str:
    text = spec.help() if callable(spec.help) else spec.help
    default = spec.default
    empty = default is None or default is False or (isinstance(default, (str, list, dict, tuple)) and not default)
    shown = not empty and not spec.negated and spec.flag is not None
    if shown and "default" not in text:
        text += f" (default: {_word(default)})".replace("%", "%%")
    return text


def _container(parser, spec: Flag, groups: dict):
    if spec.group is not None and isinstance(parser, argparse.ArgumentParser):
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        parser = groups[spec.group]
    if spec.exclusive is not None:
        key = ("exclusive", spec.exclusive)
        if key not in groups:
            groups[key] = parser.add_mutually_exclusive_group()
        parser = groups[key]
    return parser


def add_config_args(parser, cls: type, *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                    prefix: str = "") -> None:
    """The flags of config dataclass `cls` on `parser` (or an argument group), those of a nested config included;
    `only` / `exclude`: by field name; `prefix`: flags --PREFIX-NAME for the fields that name no flag."""
    only = None if only is None else set(only)
    exclude = set(exclude)
    holder = parser.__dict__.setdefault("_config_groups", {}) if isinstance(parser, argparse.ArgumentParser) \
        else {}
    for spec in flags(cls, prefix):
        if spec.name in exclude or (only is not None and spec.name not in only):
            continue
        if spec.kind == "nested":
            add_config_args(parser, spec.config)
            continue
        where = _container(parser, spec, holder)
        metavar = spec.metavar or ("{" + ",".join(map(str, spec.choices)) + "}" if spec.choices else None)
        common = dict(action=ConfigAction, kind=spec.kind, type=spec.type, choices_=spec.choices, metavar=metavar)
        if spec.flag is None:
            where.add_argument(spec.dest, nargs=spec.nargs, default=spec.default, help=_help_text(spec), **common)
            continue
        default = {"switch": False, "append": spec.raw(spec.default) or None}.get(spec.kind, spec.default)
        default = copy.deepcopy(default)  # a list default is not shared between parses
        where.add_argument(spec.flag, dest=spec.dest, default=default, help=_help_text(spec), **common)
        if spec.more and only is None:  # for --help-all (a command that picks its flags shows them)
            more(parser, spec.flag)
        for alias in spec.aliases:
            where.add_argument(alias, dest=spec.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                               new_flag=spec.flag, **common)
        if spec.options_of is not None and isinstance(parser, argparse.ArgumentParser):
            _late_options(parser, spec.options_of)


def _add_options(parser: argparse.ArgumentParser, options_of: Callable[[], tuple]) -> None:
    """The flags of the methods' options on `parser`, once; none given leaves its option's value alone."""
    if getattr(parser, "_options_added", False):
        return
    parser._options_added = True
    methods, specs = options_of()
    group = parser.add_argument_group("method options", f"{methods}. Each option is also --option KEY=VALUE; a "
                                      "method refuses the options of another")
    for spec in specs:
        metavar = spec.metavar or ("{" + ",".join(map(str, spec.choices)) + "}" if spec.choices else
                                   spec.flag.lstrip("-").replace("-", "_").upper())
        group.add_argument(spec.flag, dest=f"option_{spec.name}", default=argparse.SUPPRESS, help=_help_text(spec),
                           action=ConfigAction, kind=spec.kind, type=spec.type, choices_=spec.choices,
                           metavar=metavar)
    _loaded_options.add(options_of)


_loaded_options: set = set()  # the option-flag providers whose flags some parser holds


def more(parser: argparse.ArgumentParser, *option_strings: str) -> None:
    """List these flags of `parser` under --help-all only (the `more` of a config field, for flags a command adds
    itself)."""
    for action in parser._actions:
        if set(action.option_strings) & set(option_strings):
            action.full_help, action.help = action.help, argparse.SUPPRESS


class HelpAll(argparse.Action):
    """--help-all: every flag, those the front door leaves out and the methods' options included."""

    def __init__(self, option_strings, dest, options_of=None, **kwargs):
        self.options_of = options_of
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show every flag, the methods' options included, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:
            if getattr(action, "full_help", None) is not None:
                action.help = action.full_help
        _add_options(parser, self.options_of)
        parser.print_help()
        parser.exit()


def _late_options(parser: argparse.ArgumentParser, options_of: Callable[[], tuple]) -> None:
    """Parse the methods' option flags only when the command line holds a word the other flags do not take:
    then they join `parser` and it parses again (building the parser and --help stay light)."""
    parser.add_argument("--help-all", action=HelpAll, options_of=options_of)
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        got, rest = plain(args, namespace)
        if rest and not getattr(parser, "_options_added", False):
            _add_options(parser, options_of)
            with quiet_aliases():  # the first parse printed them
                got, rest = plain(args, namespace)
        return got, rest

    parser.parse_known_args = parse_known_args


def config_from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", **overrides):
    """The `cls` of parsed flags (those `add_config_args(parser, cls, prefix=prefix)` added; a field whose flag
    was not added keeps its default); `overrides` win over the flags. The global `come --quiet` turns a config's
    `progress` field off."""
    kwargs = {}
    for spec in flags(cls, prefix):
        if spec.name in overrides:
            continue
        if spec.kind == "nested":
            kwargs[spec.name] = config_from_args(spec.config, args)
        elif hasattr(args, spec.dest):
            kwargs[spec.name] = spec.value(getattr(args, spec.dest))
        if spec.options_of is not None and spec.options_of in _loaded_options and spec.name in kwargs:
            given = {o.name: o.value(getattr(args, f"option_{o.name}")) for o in spec.options_of()[1]
                     if hasattr(args, f"option_{o.name}")}
            kwargs[spec.name] = {**kwargs[spec.name], **given}  # a flag of its own wins over --option
    if getattr(args, "quiet", False) and "progress" not in overrides and \
            any(f.name == "progress" for f in dataclasses.fields(cls)):
        kwargs["progress"] = False
    return cls(**kwargs, **overrides)


def arg(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, **metadata) -> dataclasses.Field:
    """A config field with its flag's metadata: `field(default=..., metadata={...})` in short."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def like(cls: type, name: str, **changes) -> dataclasses.Field:
    """A field with the default and flag metadata of field `name` of `cls` (`changes`: metadata to replace), so
    that configs sharing a setting (--dtype, --target-layers, ...) declare its flag once; where `come prune` lists
    it (`more`) and its methods' option flags (`options_of`) stay prune's."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    own = {k: v for k, v in f.metadata.items() if k not in ("more", "options_of")}  # `come prune`'s own
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata={**own, **changes})
