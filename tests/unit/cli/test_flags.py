"""llama.flags: each command line is checked against main's signature before anything runs, and
--help describes every flag with its choices and default."""

import importlib.util
import sys

import pytest

from llama.cli import chat, reshard
from llama.cli.flags import check_args
from llama.cli.frontend import FLAGS
from llama.cli.run import run
from llama.errors import ConfigError
from llama.kernels.formats import METHODS
from support.helpers import REPO

PROG = "python example_text_completion.py"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXT = _example("example_text_completion")
CHAT = _example("example_chat_completion")
COMMANDS = {  # prog -> (main, its flag table)
    PROG: (TEXT.main, FLAGS),
    "python example_chat_completion.py": (CHAT.main, CHAT.CHAT_FLAGS),
    "python -m llama.chat": (chat.main, chat.CHAT_FLAGS),
    "python -m llama.reshard": (reshard.main, reshard.FLAGS),
}


def check(*argv, main=TEXT.main, flags=FLAGS):
    return check_args(main, [str(a) for a in argv], flags, PROG)


def refused(*argv, main=TEXT.main, flags=FLAGS) -> str:
    with pytest.raises(ConfigError) as info:
        check(*argv, main=main, flags=flags)
    return str(info.value)


def test_fire_gets_every_flag_as_name_equals_value_and_positionals_keep_their_place():
    # The reference's own launch line, and its positional form.
    assert check("--ckpt_dir", "llama-2-7b/", "--tokenizer_path", "tokenizer.model", "--max_gen_len", 8) == [
        "--ckpt_dir=llama-2-7b/",
        "--tokenizer_path=tokenizer.model",
        "--max_gen_len=8",
    ]
    assert check("llama-2-7b/", "tokenizer.model", "--temperature", -1, "--", "--trace") == [
        "llama-2-7b/",
        "tokenizer.model",
        "--temperature=-1",
        "--",
        "--trace",
    ]


@pytest.mark.parametrize(
    "argv, value",
    [
        (["--stream"], "True"),
        (["--stream=false"], "False"),
        (["--stream=True"], "True"),
        (["--nostream"], "False"),
        (["--stream", "no"], "False"),
        (["--compile=1"], "True"),
    ],
)
def test_switches_take_a_boolean_or_nothing(argv, value):
    assert check(*argv) == [f"--{argv[0].lstrip('-').split('=')[0].replace('nostream', 'stream')}={value}"]


def test_a_switch_with_any_other_value_is_refused_naming_flag_and_value():
    assert refused("--stream=maybe") == (
        "--stream is a switch and takes no value, got 'maybe'; write --stream to turn it on, --nostream "
        "(or --stream=false) to turn it off"
    )
    # fire would have read the next word as the switch's value and thrown the checkpoint away
    assert "got 'llama-2-7b/'" in refused("--stream", "llama-2-7b/", "tokenizer.model")


def test_a_tokenizer_without_a_checkpoint_is_named_as_typed():
    # A checkpoint alone is fine (its tokenizer.model is looked for beside it); a tokenizer alone is not.
    assert refused("--tokenizer_path", "tok.model") == (
        "--tokenizer_path was given without --ckpt_dir; pass the checkpoint folder too (Meta's or a Hugging "
        "Face one), or neither to run the bundled demo model"
    )


def test_one_letter_flags_are_refused_with_the_flags_they_could_mean():
    assert refused("-c", "x") == "unknown flag '-c': one-letter flags are not accepted; use --ckpt_dir or --compile"
    assert refused("-z") == "unknown flag '-z': one-letter flags are not accepted; use the --name form"


def test_a_flag_without_its_value_and_an_unknown_flag():
    assert refused("--ckpt_dir") == "--ckpt_dir needs a value, e.g. --ckpt_dir llama-2-7b/"
    assert refused("--temprature", 0.5).startswith(
        f"unknown flag '--temprature'; {PROG} accepts --ckpt_dir, --tokenizer_path, --temperature, --top_p"
    )


def test_reshard_wants_its_count_as_a_flag():
    args = dict(main=reshard.main, flags=reshard.FLAGS)
    assert refused("src", "dst", **args) == "missing required flag --shards; e.g. --shards 2"
    assert refused("src", "dst", 2, **args) == "unexpected extra arguments ['2']; pass options as --name value"
    assert refused("src", "--shards", 2, **args) == (
        f"missing required argument DST_DIR; usage: {PROG} SRC_DIR DST_DIR --shards N [--FLAG VALUE ...]"
    )
    assert check("src", "dst", "--shards", 2, **args) == ["src", "dst", "--shards=2"]


def _help(monkeypatch, capsys, prog):
    main, flags = COMMANDS[prog]
    monkeypatch.setattr(sys, "argv", [prog, "--help"])
    run(main, flags, prog)
    return capsys.readouterr().out


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_help_describes_every_flag_once_with_its_default(monkeypatch, capsys, prog):
    text = _help(monkeypatch, capsys, prog)
    main, flags = COMMANDS[prog]
    assert text.startswith(f"usage: {prog} ")
    rows = [line for line in text.splitlines() if line.startswith("  ")]
    params = list(__import__("inspect").signature(main).parameters)
    assert len(rows) == len(params)
    for name, row in zip(params, rows):
        assert f"--{name}" in row and flags[name].help in row, row
        assert "(default: " in row or "(required)" in row or "; default: " in row, row
    assert "Optional" not in text and "-c," not in text


def test_help_lines_of_the_text_example(monkeypatch, capsys):
    text = _help(monkeypatch, capsys, PROG)
    assert "\n  --stream                print each answer as it is generated, token by token (default: off)\n" in text
    assert f"(choices: {', '.join(METHODS)}; default: none)" in text
    assert "  --max_gen_len N         most tokens to generate for each prompt (default: 64)\n" in text
    assert "  --repetition_penalty R  > 1 makes tokens already in the prompt or answer less likely" in text
    assert text.endswith(
        "in this order: CKPT_DIR TOKENIZER_PATH TEMPERATURE TOP_P MAX_SEQ_LEN MAX_GEN_LEN "
        "MAX_BATCH_SIZE DEVICE DTYPE.\n"
    )


def test_reshard_help_shows_shards_as_a_flag(monkeypatch, capsys):
    text = _help(monkeypatch, capsys, "python -m llama.reshard")
    assert text.startswith("usage: python -m llama.reshard SRC_DIR DST_DIR --shards N [--FLAG VALUE ...]\n")
    assert "\n  --shards N           how many shards to write" in text
