"""The package's layering: no import cycle, no import from a lower layer to a higher one, and the
offline tools' --help without fairscale or the native kernels."""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "llama"
REPO = PACKAGE.parent

# Lower layers first; a module may import its own layer's modules and lower ones only.
LAYERS = [
    ["errors"],
    ["validation", "kv_cache", "model", "tokenizer", "tokenizer_json", "bpe_table", "chat_format", "tools", "demo"],
    ["runtime"],
    ["kernels"],
    ["layers"],
    ["weights"],
    ["decoding"],
    ["building", "generation", "streaming"],
    ["serve", "testing"],
    ["cli"],
    ["chat", "reshard", "convert", "quantize", "server", "__init__", "__main__"],  # entry points and the facade
]
LAYER = {top: rank for rank, tops in enumerate(LAYERS) for top in tops}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> List[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    if not base.startswith("llama"):
        return []
    # `from . import x` names modules (the package itself is only their parent); `from .x import y`
    # names module x, and y may be a module too: both count
    names = [f"{base}.{alias.name}" for alias in node.names]
    return names if node.module is None else names + [base]


def import_graph() -> Dict[str, Set[str]]:
    """llama module -> the llama modules it imports (anywhere in the file, lazy and type-only imports too)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in paths.items():
        targets: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("llama")}
            elif isinstance(node, ast.ImportFrom):
                targets |= set(_resolve(node, name, path.name == "__init__.py"))
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYER[top]


def test_every_module_has_a_layer():
    unknown = sorted(m for m in import_graph() if (m.split(".") + ["__init__"])[1] not in LAYER)
    assert not unknown, f"give these modules a layer in LAYERS: {unknown}"


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = sorted(
        f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
        for a, targets in graph.items()
        for b in targets
        if layer_of(b) > layer_of(a) and not b.startswith(a + ".")  # a package's __init__ may name its modules
    )
    assert not upward, "\n".join(upward)


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle (as a path that ends where it starts), or [] if there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_there_is_no_import_cycle():
    assert find_cycle(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    assert layer_of("llama.cli.run") > layer_of("llama.weights.meta") > layer_of("llama.kernels.formats")


@pytest.mark.parametrize("tool", ["reshard", "convert", "quantize"])
def test_an_offline_tools_help_imports_neither_fairscale_nor_the_native_kernels(tool):
    # -X importtime lists every module the run imported, on stderr.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"llama.{tool}", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: python -m llama.{tool} ")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert f"llama.cli.{tool}" in imported  # the listing works ...
    assert not {m for m in imported if m.split(".")[0] == "fairscale" or m.startswith("llama.kernels.native")}


@pytest.mark.parametrize(
    "command",
    [["-m", "llama.chat"], ["-m", "llama.server"], ["example_text_completion.py"], ["example_chat_completion.py"]],
)
def test_a_generator_commands_help_does_not_import_torch(command):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: python ") and "--top_k K" in done.stdout or command[-1] == "llama.server"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "llama.cli.flags" in imported  # the listing works ...
    assert not {m for m in imported if m.split(".")[0] == "torch"}  # ... and torch is not in it
