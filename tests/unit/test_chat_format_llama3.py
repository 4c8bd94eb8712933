"""Llama 3 chat layout (ChatFormat) and the per-family entry points encode_dialog / is_unsafe."""

import pytest

from llama.chat_format import encode_dialog, encode_llama2_dialog, is_unsafe
from llama.errors import ConfigError
from llama.tokenizer import ChatFormat, Tokenizer
from support.llama3_tokenizer import llama3_tokenizer_path

# <|start_header_id|>, <|end_header_id|>, <|eot_id|>, <|begin_of_text|>
SOT, EOH, EOT, BOT = 128006, 128007, 128009, 128000
SENTENCE = [2028, 374, 264, 1296, 11914, 13]  # "This is a test sentence."


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(llama3_tokenizer_path())


@pytest.fixture(scope="module")
def fmt(tok):
    return ChatFormat(tok)


def test_headers_of_every_role(fmt):
    assert [fmt.encode_header({"role": r, "content": "x"}) for r in ("system", "user", "assistant", "ipython")] == [
        [SOT, 9125, EOH, 271],
        [SOT, 882, EOH, 271],
        [SOT, 78191, EOH, 271],
        [SOT, 23799, 4690, EOH, 271],
    ]


def test_a_message_is_header_stripped_content_and_eot(fmt):
    expected = [SOT, 882, EOH, 271] + SENTENCE + [EOT]  # meta-llama/llama3, llama/test_tokenizer.py
    assert fmt.encode_message({"role": "user", "content": "This is a test sentence."}) == expected
    assert fmt.encode_message({"role": "user", "content": " \n This is a test sentence.\n\n "}) == expected
    assert fmt.encode_message({"role": "assistant", "content": ""}) == [SOT, 78191, EOH, 271, EOT]


def test_a_dialog_prompt_ends_with_an_empty_assistant_header(fmt):
    dialog = [
        {"role": "system", "content": "This is a test sentence."},
        {"role": "user", "content": "This is a response."},
    ]
    assert fmt.encode_dialog_prompt(dialog) == (  # meta-llama/llama3, llama/test_tokenizer.py
        [BOT, SOT, 9125, EOH, 271]
        + SENTENCE
        + [EOT, SOT, 882, EOH, 271, 2028, 374, 264, 2077, 13, EOT, SOT, 78191, EOH, 271]
    )


def test_special_token_text_in_content_stays_text(fmt, tok):
    ids = fmt.encode_message({"role": "user", "content": "<|eot_id|><|start_header_id|>"})
    assert ids.count(EOT) == 1 and SOT not in ids[1:]
    assert tok.decode(ids[4:-1]) == "<|eot_id|><|start_header_id|>"


def test_encode_dialog_picks_the_llama3_layout_for_a_tiktoken_tokenizer(tok, fmt):
    dialog = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "ipython", "content": '{"ok": true}'},
    ]
    ids = encode_dialog(tok, dialog)
    assert ids == fmt.encode_dialog_prompt(dialog)
    assert ids[:6] == [BOT, SOT, 882, EOH, 271, 13347] and ids[-4:] == [SOT, 78191, EOH, 271]
    assert all(type(i) is int for i in ids)


def test_llama3_has_no_unsafe_tag_rule(tok, tokenizer_path):
    dialog = [{"role": "user", "content": "[INST] <<SYS>> hi"}]
    assert is_unsafe(tok, dialog) is False
    assert tok.decode(encode_dialog(tok, dialog)).endswith(
        "[INST] <<SYS>> hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert is_unsafe(Tokenizer(tokenizer_path), dialog) is True
    assert is_unsafe(Tokenizer(tokenizer_path), [{"role": "user", "content": "hi"}]) is False


def test_an_unknown_role_names_dialog_message_role_and_the_allowed_roles(tok):
    dialog = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    with pytest.raises(ConfigError) as err:
        encode_dialog(tok, dialog, index=2)
    assert str(err.value) == (
        "dialog 3, message 2: unknown role 'tool'; use one of ('system', 'user', 'assistant', 'ipython')"
    )


@pytest.mark.parametrize(
    "dialog, error, message",
    [
        ([], ConfigError, "dialog 1 must be a non-empty list of messages, got []"),
        ([{"role": "user"}], ConfigError, "dialog 1, message 1: expected {'role': ..., 'content': ...}"),
        ([{"role": "user", "content": 3}], TypeError, "dialog 1, message 1: content must be a str, got int"),
    ],
)
def test_malformed_llama3_dialogs(tok, dialog, error, message):
    with pytest.raises(error) as err:
        encode_dialog(tok, dialog)
    assert str(err.value).startswith(message)


def test_llama2_keeps_its_layout_and_roles(tokenizer_path):
    sp = Tokenizer(tokenizer_path)
    dialog = [{"role": "user", "content": "hi"}]
    assert encode_dialog(sp, dialog) == encode_llama2_dialog(sp, dialog) == sp.encode("[INST] hi [/INST]", True, False)
    with pytest.raises(ConfigError, match=r"unknown role 'ipython'; use one of \('system', 'user', 'assistant'\)$"):
        encode_dialog(sp, [{"role": "ipython", "content": "hi"}])


def test_a_tokenizer_of_unknown_kind_is_refused(tok):
    class Odd:
        kind = "wordpiece"

    with pytest.raises(
        ConfigError, match="tokenizer kind 'wordpiece' has no chat format; expected 'sentencepiece' or 'tiktoken'"
    ):
        encode_dialog(Odd(), [{"role": "user", "content": "hi"}])
