"""Hugging Face tokenizer.json files (llama.tokenizer.JsonTokenizer): the ids of transformers'
tokenizer for the same file, and the specials, stop tokens and chat layout of the family's own
tokenizer (SentencePiece for Llama 2, tiktoken for Llama 3)."""

import json
import pickle
import shutil

import pytest

from llama.chat_format import encode_dialog, is_unsafe
from llama.cli.destination import copy_tokenizer
from llama.errors import CheckpointError, MissingFileError
from llama.serve.shapes import token_bytes
from llama.tokenizer import JsonTokenizer, SentencePieceTokenizer, TiktokenTokenizer, Tokenizer
from llama.weights.tokenizer_files import find_tokenizer
from support.llama3_tokenizer import llama3_tokenizer_path
from support.tokenizer_json import hf_tokenizer, llama2_json, llama3_json

TEXTS = [
    "Hello world",
    "héllo wörld, naïve café",
    "日本語のテキスト",
    "emoji 🦙🎉 here",
    "a  b   c\t\td\n\n e ",
    "   \n\n  x",
    "<s>[INST] hi [/INST]</s>",
    "<|begin_of_text|><|eot_id|>",
    "1234567 and 3.14",
    "",
]
DIALOG = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2 + 2?"},
]


@pytest.fixture(scope="module")
def llama3_files(tmp_path_factory):
    path = llama3_json(llama3_tokenizer_path(), tmp_path_factory.mktemp("llama3-json"))
    return TiktokenTokenizer(llama3_tokenizer_path()), Tokenizer(path), hf_tokenizer(path)


@pytest.fixture(scope="module")
def llama2_files(tokenizer_path, tmp_path_factory):
    path = llama2_json(tokenizer_path, tmp_path_factory.mktemp("llama2-json"))
    return SentencePieceTokenizer(tokenizer_path), Tokenizer(path), hf_tokenizer(path)


def hf_ids(hf, s):
    # Special tokens only as ids: text that looks like one is text, as with our other tokenizers.
    return hf.encode(s, add_special_tokens=False, split_special_tokens=True)


# --- Llama 3 ------------------------------------------------------------------------------------


def test_a_llama3_json_has_the_tiktoken_tokenizers_ids_and_specials(llama3_files):
    tiktoken_tok, tok, _ = llama3_files
    assert isinstance(tok, JsonTokenizer) and tok.kind == "tiktoken"
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id) == (128256, 128000, 128001, -1)
    assert (tok.eot_id, tok.eom_id, tok.stop_tokens) == (128009, 128008, [128001, 128008, 128009])
    assert tok.special_tokens == tiktoken_tok.special_tokens
    for name in ("n_words", "bos_id", "eos_id", "pad_id", "eot_id", "eom_id", "stop_tokens"):
        assert getattr(tok, name) == getattr(tiktoken_tok, name), name


def test_a_llama3_json_encodes_as_transformers_and_tiktoken(llama3_files):
    tiktoken_tok, tok, hf = llama3_files
    assert tok.encode("Hello world", bos=True, eos=True) == [128000, 9906, 1917, 128001]
    assert tok.encode("<|eot_id|>", bos=False, eos=False) == [27, 91, 68, 354, 851, 91, 29]
    for s in TEXTS:
        ids = tok.encode(s, bos=False, eos=False)
        assert ids == hf_ids(hf, s) == tiktoken_tok.encode(s, bos=False, eos=False), s
        assert tok.encode(s, bos=True, eos=True) == [128000] + ids + [128001]


def test_a_llama3_json_decodes_as_transformers_and_tiktoken(llama3_files):
    tiktoken_tok, tok, hf = llama3_files
    for s in TEXTS:
        ids = tok.encode(s, bos=True, eos=False) + [128009]
        assert tok.decode(ids) == hf.decode(ids) == tiktoken_tok.decode(ids) == "<|begin_of_text|>" + s + "<|eot_id|>"
    llama = tok.encode("🦙", bos=False, eos=False)
    assert llama == [9468, 99, 247]
    assert tok.decode(llama[:1]) == tiktoken_tok.decode(llama[:1]) == "\ufffd"  # an incomplete character
    assert tok.decode(1917) == " world"


def test_a_llama3_json_gives_the_same_dialog_tokens(llama3_files):
    tiktoken_tok, tok, _ = llama3_files
    assert encode_dialog(tok, DIALOG) == encode_dialog(tiktoken_tok, DIALOG)
    assert encode_dialog(tok, DIALOG[1:2])[:4] == [128000, 128006, 882, 128007]  # <|begin_of_text|>, user header
    assert encode_dialog(tok, DIALOG, tools=["brave_search"]) == encode_dialog(
        tiktoken_tok, DIALOG, tools=["brave_search"]
    )
    assert not is_unsafe(tok, [{"role": "user", "content": "[INST]"}])


def test_a_llama3_jsons_token_bytes_are_tiktokens(llama3_files):
    tiktoken_tok, tok, _ = llama3_files
    for token in list(range(0, 128256, 37)) + [220, 9468, 128000, 128009, 128255]:
        assert token_bytes(tok, token) == token_bytes(tiktoken_tok, token), token


# --- Llama 2 ------------------------------------------------------------------------------------


def test_a_llama2_json_has_the_sentencepiece_tokenizers_ids(llama2_files):
    sp, tok, _ = llama2_files
    assert isinstance(tok, JsonTokenizer) and tok.kind == "sentencepiece"
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_tokens) == (512, 1, 2, -1, [2])
    assert (sp.n_words, sp.bos_id, sp.eos_id, sp.pad_id, sp.stop_tokens) == (512, 1, 2, -1, [2])


def test_a_llama2_json_encodes_and_decodes_as_transformers(llama2_files):
    _, tok, hf = llama2_files
    assert tok.encode("Hello world", bos=True, eos=True) == [1, 426, 506, 427, 435, 323, 302, 277, 435, 439, 2]
    for s in TEXTS:
        ids = tok.encode(s, bos=False, eos=False)
        assert ids == hf_ids(hf, s), s
        assert tok.encode(s, bos=True, eos=True) == [1] + ids + [2]
        with_specials = [1] + ids + [2]
        assert tok.decode(with_specials) == hf.decode(with_specials, skip_special_tokens=True), s
    # As SentencePiece, decoding drops the space the encoder put before the first word: one leading space.
    assert tok.decode(tok.encode("   \n\n  x", bos=True, eos=False)) == "  \n\n  x"
    assert tok.decode(tok.encode("a  b   c\t\td\n\n e ", bos=True, eos=False)) == "a  b   c\t\td\n\n e "


def test_a_llama2_json_matches_sentencepiece_where_its_normalizer_changes_nothing(llama2_files):
    # The tiny model's SentencePiece normalizer (NFKC, runs of spaces squeezed) is not in a transformers
    # tokenizer.json, as for Meta's Llama 2 (whose tokenizer.model normalizes nothing).
    sp, tok, _ = llama2_files
    for s in ["Hello world", "héllo wörld, naïve café", "emoji 🦙🎉 here", "<s>[INST] hi [/INST]</s>", ""]:
        ids = tok.encode(s, bos=True, eos=True)
        assert ids == sp.encode(s, bos=True, eos=True), s
        assert tok.decode(ids) == sp.decode(ids) == s  # bos and eos decode to nothing
    assert tok.decode(426) == sp.decode([426]) == ""


def test_a_llama2_json_gives_the_inst_layout(llama2_files):
    sp, tok, _ = llama2_files
    # One user turn: the other turns end in a space and the system text in newlines, which the tiny
    # model's normalizer squeezes.
    dialog = DIALOG[1:2]
    assert (
        encode_dialog(tok, dialog)
        == encode_dialog(sp, dialog)
        == sp.encode("[INST] Hi there [/INST]", bos=True, eos=False)
    )
    assert encode_dialog(tok, DIALOG[1:]) == (
        tok.encode("[INST] Hi there [/INST] Hello! ", bos=True, eos=True)
        + tok.encode("[INST] What is 2 + 2? [/INST]", bos=True, eos=False)
    )
    assert is_unsafe(tok, [{"role": "user", "content": "[INST]"}])


def test_a_llama2_jsons_token_bytes_are_sentencepieces(llama2_files):
    sp, tok, _ = llama2_files
    assert [token_bytes(tok, t) for t in range(512)] == [token_bytes(sp, t) for t in range(512)]
    with pytest.raises(ValueError) as err:
        tok.token_bytes(512)
    assert str(err.value) == f"token 512 is not an id of {tok.file.path!r}; its ids are 0 .. 511"


def test_a_json_tokenizer_pickles(llama2_files):
    _, tok, _ = llama2_files
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode("Hello world", bos=True, eos=False) == tok.encode("Hello world", bos=True, eos=False)


# --- files that are not a Llama tokenizer.json ---------------------------------------------------


def word_level_json(path, vocab):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel

    HFTokenizer(WordLevel(vocab, unk_token=next(iter(vocab)))).save(str(path))
    return path


def refusal(path) -> str:
    """The message of the CheckpointError that loading `path` raises."""
    with pytest.raises(CheckpointError) as err:
        Tokenizer(path)
    return str(err.value)


LLAMA_TOKENS = (
    "a Llama tokenizer.json has Llama 3's <|begin_of_text|>, <|end_of_text|>, <|start_header_id|>, "
    "<|end_header_id|>, <|eot_id|> or Llama 2's <s> and </s>: pass the tokenizer that came with the weights"
)


@pytest.mark.parametrize(
    "vocab, why",
    [
        ({"[UNK]": 0, "hello": 1}, "has no <s> token; " + LLAMA_TOKENS),
        ({"<|begin_of_text|>": 0}, "has no <|end_of_text|> token; " + LLAMA_TOKENS),
        (
            {"<|begin_of_text|>": 0, "<|eot_id|>": 1},
            "has <|eot_id|> as token 1, but Llama 3 numbers it 9 (<|begin_of_text|> + 9); this tokenizer.json "
            "is not a Llama 3 one: pass the tokenizer that came with the weights",
        ),
    ],
)
def test_a_json_without_llamas_special_tokens_is_refused(tmp_path, vocab, why):
    path = word_level_json(tmp_path / "tokenizer.json", vocab)
    assert refusal(path) == f"{str(path)!r} {why}"


def test_a_broken_json_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": ')
    assert refusal(path) == (
        f"{str(path)!r} is JSON but not a tokenizer.json the tokenizers library can read (EOF while parsing a "
        "value at line 1 column 28); pass the tokenizer.model or tokenizer.json that came with the weights "
        "(download it again if truncated)"
    )


# --- where the tokenizer is found ----------------------------------------------------------------


def test_a_folder_with_only_a_tokenizer_json_uses_it(tmp_path, tokenizer_path):
    json_path = word_level_json(tmp_path / "tokenizer.json", {"<unk>": 0, "<s>": 1, "</s>": 2})
    assert find_tokenizer(tmp_path, None) == str(json_path)
    (tmp_path / "original").mkdir()
    shutil.copy(tokenizer_path, tmp_path / "original" / "tokenizer.model")
    assert find_tokenizer(tmp_path, None) == str(tmp_path / "original" / "tokenizer.model")
    shutil.copy(tokenizer_path, tmp_path / "tokenizer.model")
    assert find_tokenizer(tmp_path, None) == str(tmp_path / "tokenizer.model")  # tokenizer.model first
    assert find_tokenizer(tmp_path, str(json_path)) == str(json_path)


def test_a_folder_without_a_tokenizer_names_the_three_places(tmp_path):
    with pytest.raises(MissingFileError) as err:
        find_tokenizer(tmp_path, None)
    assert str(err.value) == (
        f"no tokenizer given and none found with the weights (looked for {tmp_path}/tokenizer.model, "
        f"{tmp_path}/original/tokenizer.model, {tmp_path}/tokenizer.json); pass --tokenizer_path pointing at "
        "the tokenizer.model or tokenizer.json that came with the weights"
    )


@pytest.mark.parametrize("layout", ["meta", "hf"])
def test_the_offline_tools_copy_a_tokenizer_json_along(tmp_path, layout):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    word_level_json(src / "tokenizer.json", {"<unk>": 0, "<s>": 1, "</s>": 2})
    copy_tokenizer(src, out, layout)
    assert [p.name for p in out.iterdir()] == ["tokenizer.json"]
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((src / "tokenizer.json").read_text())


def test_build_with_only_a_tokenizer_json_generates_as_with_tokenizer_model(
    llama2_files, make_ckpt, tokenizer_path, tmp_path
):
    from llama import Llama

    _, tok, _ = llama2_files
    ckpt = shutil.copytree(make_ckpt("mha"), tmp_path / "ckpt")
    shutil.copy(tok.file.path, ckpt / "tokenizer.json")
    with_json = Llama.build(str(ckpt), None, 64, 1, device="cpu", dtype="float32")
    assert isinstance(with_json.tokenizer, JsonTokenizer)
    with_model = Llama.build(str(make_ckpt("mha")), str(tokenizer_path), 64, 1, device="cpu", dtype="float32")
    kw = dict(max_gen_len=6, temperature=0.0, logprobs=True)
    (json_out,), (model_out,) = (g.text_completion(["Hello world"], **kw) for g in (with_json, with_model))
    assert json_out["tokens"] == model_out["tokens"] == ["j", "li", "tur", "\ufffd", "$", "ut"]
    assert json_out["logprobs"] == model_out["logprobs"]
    # The random model's bytes <0xE2> <0x24> are not UTF-8: `tokenizers` (as transformers) gives U+FFFD for
    # each, SentencePiece only for the first.
    assert (json_out["generation"], model_out["generation"]) == ("jlitur\ufffd\ufffdut", "jlitur\ufffd$ut")
