"""The demo model's training text: English about programming that ships with every Python.

Three sources, all read offline and in a fixed order so a run is reproducible for a given
Python version (the bundled model was trained on CPython 3.11.7):
- `pydoc_data.topics`: the language reference pages behind `help("with")` etc.;
- the docstrings of the standard library's own modules, classes and functions;
- the standard library's comments of two or more lines (informal prose about code).
From the same text we also make short question/answer dialogs in the Llama 2 chat format, so
the demo answers `[INST] ... [/INST]` prompts with a paragraph and then stops (eos).
"""

import ast
import os
import random
import re
import sysconfig
import tokenize
from pydoc_data.topics import topics
from typing import Iterator, List, Tuple

UNDERLINE = re.compile(r"^[*=\-~^]{3,}$")
QUESTIONS = (
    "What is {}?",
    "Tell me about {}.",
    "Explain {}.",
    "Can you describe {}?",
    "What should I know about {}?",
)
SYSTEM_PROMPTS = (
    "Answer briefly.",
    "You are a helpful assistant who knows Python well.",
    "Be precise.",
    "Always answer in one paragraph.",
)
# Parts of the standard library that are tests, demos or vendored code, not documentation.
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def reflow(text: str) -> str:
    """Join hard-wrapped prose lines into one line per paragraph; keep code blocks verbatim."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        lines = block.splitlines()
        if len(lines) == 2 and UNDERLINE.match(lines[1].strip()):
            blocks.append(lines[0].strip())  # a section heading
        elif block[:1].isspace() or block.startswith(">>>") or "::=" in block:
            blocks.append(block)
        else:
            blocks.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(blocks)


def topic_documents() -> Iterator[str]:
    for name in sorted(topics):
        yield reflow(topics[name])


def _stdlib_files() -> List[str]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, sysconfig.get_paths()["stdlib"])[: -len(".py")]
    parts = [p for p in rel.split(os.sep) if p != "__init__"]
    return ".".join(parts)


def docstrings() -> Iterator[Tuple[str, str]]:
    """(dotted name, docstring) for every documented public module, class and function."""
    for path in _stdlib_files():
        module = _module_name(path)
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        doc = ast.get_docstring(tree)
        if doc:
            yield module, doc
        yield from _member_docstrings(tree, module)


def _member_docstrings(parent: ast.AST, prefix: str) -> Iterator[Tuple[str, str]]:
    """Public classes and functions of `parent`, and the methods of its classes."""
    for node in parent.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc:
                yield f"{prefix}.{node.name}", doc
            if isinstance(node, ast.ClassDef):
                yield from _member_docstrings(node, f"{prefix}.{node.name}")


def sections(text: str) -> Iterator[Tuple[str, str]]:
    """(heading, first prose paragraph) of each section of a reflowed pydoc topic."""
    blocks = text.split("\n\n")
    for heading, body in zip(blocks, blocks[1:]):
        if "\n" not in heading and len(heading) < 80 and not heading.endswith(".") and _is_prose(body):
            yield heading, body


def _is_prose(paragraph: str) -> bool:
    return 40 <= len(paragraph) <= 1200 and "\n" not in paragraph and paragraph.endswith((".", ":"))


def qa_pairs() -> List[Tuple[str, str]]:
    """Questions about pydoc sections and stdlib names, answered by their first paragraph."""
    pairs = []
    for text in topic_documents():
        pairs += [(h, body) for h, body in sections(text)]
    for name, doc in docstrings():
        first = reflow(doc).split("\n\n")[0]
        if _is_prose(first):
            pairs.append((name if "." not in name else f"{name}()", first))
    return pairs


def dialogs(seed: int) -> Iterator[List[dict]]:
    """Dialogs of 1-3 question/answer turns (sometimes with a system prompt), in a seeded order."""
    rng = random.Random(seed)
    pairs = qa_pairs()
    rng.shuffle(pairs)
    i = 0
    while i < len(pairs):
        turns = pairs[i : i + rng.choice((1, 1, 2, 3))]
        i += len(turns)
        dialog = []
        if rng.random() < 0.2:
            dialog.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for subject, answer in turns:
            dialog.append({"role": "user", "content": rng.choice(QUESTIONS).format(subject)})
            dialog.append({"role": "assistant", "content": answer})
        yield dialog


def comments(min_lines: int = 2) -> Iterator[str]:
    """Runs of consecutive `#` comment lines in the standard library, joined into one paragraph."""
    for path in _stdlib_files():
        try:
            with open(path, "rb") as f:
                tokens = list(tokenize.tokenize(f.readline))
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, ValueError):
            continue
        run: List[str] = []
        for tok in tokens:
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if text and not text.startswith(("!", "-*-", "type:", "noqa", "pragma")):
                    run.append(text)
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                if len(run) >= min_lines:
                    yield " ".join(run)
                run = []


def documents() -> Iterator[str]:
    """Every plain-text document: the pydoc topics, the stdlib docstrings, then its comments."""
    yield from topic_documents()
    for _, doc in docstrings():
        yield reflow(doc)
    yield from comments()
