"""The shape of the code, read with ``ast`` (no imports of the modules checked): the one-carrier design (issue 20).

* no import circle between the package's modules (every ``import``, at module level or inside a function);
* below the public signatures, at most 10 places (function definitions and calls) name 8 or more hyperparameters
  -- the argument object :class:`polyfocal._args.Args` carries them instead;
* ``modules.py`` stays a thin layer (<= 350 lines) and no function on the loss path is longer than 60 code lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "polyfocal"

#: the names of the loss options (the public keywords and the argument object's fields)
HYPERPARAMETERS = frozenset(
    "activation epsilon gamma alpha weight ignore_index label_smoothing normalizer pos_weight reduction "
    "detach_modulator prior tau margin logit_scale z_loss gamma_neg clip variant iou_weighted score softcap "
    "class_weight bias ls".split()
)
#: the loss path: every module a loss call runs through
LOSS_PATH = (
    "_args.py",
    "_core.py",
    "_params.py",
    "_validation.py",
    "functional.py",
    "modules.py",
    "kernels/__init__.py",
    "kernels/_dispatch.py",
    "kernels/_ops.py",
    "kernels/_torch_impl.py",
    "kernels/_native.py",
    "kernels/_triton_impl.py",
    "linear.py",
    "linear_parallel.py",
)


def _modules() -> dict[str, ast.Module]:
    return {p.relative_to(SRC).as_posix(): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))}


def _module_name(rel: str) -> str:
    parts = ["polyfocal", *rel[:-3].split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(rel: str, tree: ast.Module) -> set[str]:
    """The package modules ``rel`` imports (relative imports resolved; ``from . import x`` names the module x)."""
    name = _module_name(rel)
    package = name if rel.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("polyfocal")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("polyfocal"):
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def test_no_import_circle():
    trees = _modules()
    names = {_module_name(rel): rel for rel in trees}
    graph = {
        _module_name(rel): {m for m in _imports(rel, tree) if m in names and m != _module_name(rel)}
        for rel, tree in trees.items()
    }
    for module in graph:  # a package's __init__ importing its own submodules is not a circle through them
        graph[module] = {m for m in graph[module] if not module.startswith(m + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def _top_level_exports() -> dict[str, set[str]]:
    """``polyfocal._EXPORTS`` (submodule -> names), read from ``__init__.py``."""
    for node in ast.parse((SRC / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {
                f"{k.value}.py": {e.value for e in v.elts}
                for k, v in zip(node.value.keys, node.value.values, strict=True)
            }
    return {}


def _public_signatures() -> set[tuple[str, str]]:
    """``(file, function)`` of the public functions and the public classes' ``__init__`` (a module's literal
    ``__all__``, or the package's ``_EXPORTS``): not counted."""
    out = set()
    top = _top_level_exports()
    for rel, tree in _modules().items():
        exported: set[str] = set(top.get(rel, ()))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                if isinstance(node.value, (ast.List, ast.Tuple)):
                    exported |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in exported:
                out.add((rel, node.name))
            elif isinstance(node, ast.ClassDef) and node.name in exported:
                out.add((rel, f"{node.name}.__init__"))
    return out


def places_naming_hyperparameters(limit: int = 8) -> list[tuple[str, int, str]]:
    """Function definitions and calls under ``src/`` that name ``limit`` or more hyperparameters, except the public
    signatures themselves and ``reference.py`` (the textbook oracle)."""
    public = _public_signatures()
    found = []
    for rel, tree in _modules().items():
        if rel == "reference.py":
            continue
        for cls in [None, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
            body = tree.body if cls is None else cls.body
            for node in body:
                if isinstance(node, ast.FunctionDef):
                    a = node.args
                    named = {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs} & HYPERPARAMETERS
                    key = node.name if cls is None else f"{cls.name}.{node.name}"
                    if len(named) >= limit and (rel, key) not in public:
                        found.append((rel, node.lineno, f"def {key}"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                named = {k.arg for k in node.keywords} | {
                    v.id if isinstance(v, ast.Name) else v.attr
                    for v in node.args
                    if isinstance(v, (ast.Name, ast.Attribute))
                }
                if len(named & HYPERPARAMETERS) >= limit:
                    found.append((rel, node.lineno, f"call {ast.unparse(node.func)}"))
    return sorted(found)


def test_hyperparameters_travel_in_the_argument_object():
    places = places_naming_hyperparameters()
    assert len(places) <= 10, "\n".join(map(str, places))


def test_the_counter_sees_a_positional_relay():
    """The check above can fail: a hand-written relay of the fields is counted."""
    tree = ast.parse("f(x, args.gamma, args.epsilon, args.alpha, args.weight, args.reduction, args.ignore_index, "
                     "args.label_smoothing, args.clip)")  # fmt: skip
    call = tree.body[0].value  # type: ignore[attr-defined]
    named = {v.attr for v in call.args if isinstance(v, ast.Attribute)}
    assert len(named & HYPERPARAMETERS) == 8


def _code_lines(node: ast.FunctionDef, lines: list[str]) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    numbers = {n for st in body for n in range(st.lineno, st.end_lineno + 1)}
    return sum(1 for n in numbers if lines[n - 1].strip() and not lines[n - 1].strip().startswith("#"))


@pytest.mark.parametrize("rel", LOSS_PATH)
def test_no_long_function_on_the_loss_path(rel):
    """Named stages instead of long functions, the ``@triton.jit`` kernels included (their stages are
    ``@triton.jit`` helpers, which Triton inlines)."""
    text = (SRC / rel).read_text(encoding="utf-8")
    lines = text.splitlines()
    long = [
        (node.name, _code_lines(node, lines))
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef) and _code_lines(node, lines) > 60
    ]
    assert not long, long


def test_modules_is_a_thin_layer():
    assert len((SRC / "modules.py").read_text(encoding="utf-8").splitlines()) <= 350
