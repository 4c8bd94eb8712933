"""The command line of a fire entry point: checked against `main`'s signature before anything runs,
and its --help, rendered from a table of flag descriptions.

fire stays the parser (Meta's example scripts use it, and `--ckpt_dir X` as well as the
positional `CKPT_DIR TOKENIZER_PATH` keep their meaning), but on its own fire would call `main`
first (load the model, generate) and only then complain about arguments it could not use; it
reads `--stream=maybe` or `--stream=false` as a true string; and its help shows
`Optional[Optional]` types and one-letter shortcuts that it then refuses as ambiguous. Here every
named argument is resolved first, booleans are spelled out for fire, and one-letter shortcuts
are not accepted (the help advertises none).
"""

import inspect
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


@dataclass(frozen=True)
class Flag:
    """How --help describes one parameter of `main`."""

    help: str  # one line: what it does
    metavar: str = "VALUE"  # the value's placeholder in --help (switches show none)
    choices: Sequence[str] = ()
    default: Optional[str] = None  # what an omitted flag means, where the signature's value says too little
    needs: Optional[Tuple[str, str]] = None  # (parameter that must come with this one, what to do otherwise)
    example: Optional[str] = None  # a typical value, for "e.g. --name VALUE" in error messages


def is_flag(arg: str) -> bool:
    """fire's rule: a leading hyphen, unless it is a negative number."""
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def wants_help(argv: Sequence[str]) -> bool:
    head = list(argv)[: list(argv).index("--")] if "--" in argv else argv  # after "--" come fire's own flags
    return any(arg in ("--help", "-h") for arg in head)


def _is_switch(param: inspect.Parameter) -> bool:
    return param.annotation is bool or isinstance(param.default, bool)


def _flag_name(arg: str, params: Mapping[str, inspect.Parameter], prog: str) -> Tuple[str, bool]:
    """-> (the parameter `arg` sets, whether it is fire's --noNAME for False); ConfigError if none."""
    key = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
    if not arg.startswith("--"):
        candidates = [n for n in params if n[0] == key[0]]
        spelled = " or ".join("--" + n for n in candidates) if candidates else "the --name form"
        raise ConfigError(f"unknown flag {arg!r}: one-letter flags are not accepted; use {spelled}")
    if key in params:
        return key, False
    if key.startswith("no") and key[2:] in params and _is_switch(params[key[2:]]) and "=" not in arg:
        return key[2:], True
    raise ConfigError(f"unknown flag {arg!r}; {prog} accepts {', '.join('--' + n for n in params)}")


def _switch_value(name: str, value: Optional[str]) -> str:
    if value is None or value.lower() in TRUE:
        return "True"
    if value.lower() in FALSE:
        return "False"
    raise ConfigError(
        f"--{name} is a switch and takes no value, got {value!r}; write --{name} to turn it on, "
        f"--no{name} (or --{name}=false) to turn it off"
    )


def check_args(main: Callable, argv: List[str], flags: Mapping[str, Flag], prog: str) -> List[str]:
    """Refuse unknown flags, bad switch values, surplus arguments and missing required ones before
    `main` runs; -> the same command line for fire, every flag written `--name=value`."""
    params = inspect.signature(main).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        return list(argv)
    named: Dict[str, str] = {}
    positional: List[str] = []
    i = 0
    while i < len(argv) and argv[i] != "--":
        arg = argv[i]
        i += 1
        if not is_flag(arg):
            positional.append(arg)
            continue
        name, negated = _flag_name(arg, params, prog)
        value = arg.split("=", 1)[1] if "=" in arg else None
        if value is None and i < len(argv) and not is_flag(argv[i]) and argv[i] != "--":
            value, i = argv[i], i + 1  # fire's `--name value`
        if _is_switch(params[name]):
            value = "False" if negated else _switch_value(name, value)
        elif value is None:
            raise ConfigError(f"--{name} needs a value, e.g. --{name} {_example(name, flags)}")
        named[name] = value
    _check_count(params, named, positional, flags, prog)
    _check_pairs(params, named, positional, flags)
    return positional + [f"--{name}={value}" for name, value in named.items()] + list(argv[i:])


def _unnamed(params: Mapping[str, inspect.Parameter], named: Mapping[str, str]) -> List[str]:
    """The parameters that positional arguments fill, in order (fire's rule: named ones are skipped)."""
    return [n for n, p in params.items() if n not in named and p.kind != p.KEYWORD_ONLY]


def _check_count(params, named, positional, flags, prog) -> None:
    unnamed = _unnamed(params, named)
    if len(positional) > len(unnamed):
        raise ConfigError(f"unexpected extra arguments {positional[len(unnamed) :]}; pass options as --name value")
    filled = set(named) | set(unnamed[: len(positional)])
    for name, param in params.items():
        if name in filled or param.default is not inspect.Parameter.empty:
            continue
        if param.kind == param.KEYWORD_ONLY:
            raise ConfigError(f"missing required flag --{name}; e.g. --{name} {_example(name, flags)}")
        raise ConfigError(f"missing required argument {name.upper()}; usage: {usage(prog, params, flags)}")


def _check_pairs(params, named, positional, flags) -> None:
    """A parameter that needs another (a checkpoint needs its tokenizer) gets an error naming what was typed."""
    by_position = dict(zip(_unnamed(params, named), positional))
    given = {**{n: f"--{n}" for n in named}, **by_position}
    for name, flag in flags.items():
        if flag.needs is None or name not in given or flag.needs[0] in given:
            continue
        other, advice = flag.needs
        if name in named:
            raise ConfigError(f"--{name} was given without --{other}; {advice}")
        k = list(by_position).index(name)
        raise ConfigError(
            f"{by_position[name]!r} was read as {name.upper()} (the {ORDINALS[k]} positional argument), but no "
            f"{other.upper()} was given; {advice}"
        )


def _metavar(name: str, flags: Mapping[str, Flag]) -> str:
    return flags[name].metavar if name in flags else "VALUE"


def _example(name: str, flags: Mapping[str, Flag]) -> str:
    return (flags[name].example if name in flags else None) or _metavar(name, flags)


def usage(prog: str, params: Mapping[str, inspect.Parameter], flags: Mapping[str, Flag]) -> str:
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    words = [n.upper() if params[n].kind != params[n].KEYWORD_ONLY else f"--{n} {_metavar(n, flags)}" for n in required]
    return " ".join([prog, *words, "[--FLAG VALUE ...]"])


def _default(param: inspect.Parameter, flag: Flag) -> Optional[str]:
    if flag.default is not None:
        return flag.default
    if param.default is inspect.Parameter.empty:
        return None
    if isinstance(param.default, bool):
        return "on" if param.default else "off"
    return "none" if param.default is None else str(param.default)


def render_help(main: Callable, flags: Mapping[str, Flag], prog: str, summary: str) -> str:
    """The --help text: usage, what the command does, one line per flag with its choices and default."""
    params = inspect.signature(main).parameters
    rows = []
    for name, param in params.items():
        flag = flags.get(name, Flag(""))
        if param.default is inspect.Parameter.empty and param.kind != param.KEYWORD_ONLY:
            left = f"{name.upper()} (--{name})"
        else:
            left = f"--{name}" if _is_switch(param) else f"--{name} {flag.metavar}"
        notes = [f"choices: {', '.join(flag.choices)}"] if flag.choices else []
        default = _default(param, flag)
        notes.append("required" if default is None else f"default: {default}")
        rows.append((left, f"{flag.help} ({'; '.join(notes)})"))
    width = max(len(left) for left, _ in rows) + 2
    positional = [n for n, p in params.items() if p.kind != p.KEYWORD_ONLY]
    lines = [f"usage: {usage(prog, params, flags)}", "", summary.strip(), "", "flags:"]
    lines += [f"  {left.ljust(width)}{text}" for left, text in rows]
    if positional:
        lines += [
            "",
            "The first flags may also be given without their names, in this order: "
            + " ".join(n.upper() for n in positional)
            + ".",
        ]
    return "\n".join(lines)
