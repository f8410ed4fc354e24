"""The layout rules of the library, checked on its files: one installed package, imports in one direction,
no private names shared across modules, short files, regular packages."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# top-level folder -> the package it installs as
LIBRARY = {"fxprune": "fxprune", "deploy": "fxprune.deploy", "integrations": "fxprune.integrations"}
# packages the core (fxprune/* except fxprune/cli) must not import
UPPER_LAYERS = ("fxprune.deploy", "fxprune.integrations", "fxprune.cli", "deploy", "integrations")
MAX_LINES = 400
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# ---------------------------------------------------------------- reading the library's files
def library_files(*folders: str) -> list[Path]:
    files = []
    for folder in folders or tuple(LIBRARY):
        files += [p for p in sorted((ROOT / folder).rglob("*.py")) if "__pycache__" not in p.parts]
    assert files, f"no Python files under {folders or tuple(LIBRARY)} in {ROOT}"
    return files


def module_name(path: Path) -> str:
    """Installed dotted name of a library file (``deploy/lut.py`` -> ``fxprune.deploy.lut``)."""
    rel = path.relative_to(ROOT).with_suffix("")
    top, *rest = rel.parts
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([LIBRARY[top], *rest])


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve(path: Path, node: ast.ImportFrom) -> str:
    """Absolute module of ``from <module> import ...`` in ``path`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module_name(path).split(".")
    if not is_package(path):
        parts = parts[:-1]  # a module's relative imports start from its package
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(path: Path, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every module an import statement (anywhere in the file, lazy ones included) may load."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve(path, node)
            yield node.lineno, base
            for alias in node.names:  # ``from fxprune import cli`` loads the submodule fxprune.cli
                yield node.lineno, f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def upper_layer_imports(path: Path, tree: ast.AST) -> list[str]:
    """Imports of ``deploy``, ``integrations`` or ``cli`` (under any of their names) in one file."""
    return [f"{where(path, line)} imports {module}" for line, module in imported_modules(path, tree)
            if any(module == up or module.startswith(up + ".") for up in UPPER_LAYERS)]


def is_ours(dotted: str) -> bool:
    """Whether ``dotted`` is under the library's installed names (or the bare folder names)."""
    return any(dotted == top or dotted.startswith(top + ".") for top in (*LIBRARY, *LIBRARY.values()))


def private_imports(path: Path, tree: ast.AST) -> list[str]:
    """``from X import _name`` and ``import X._name`` of the library's own modules in one file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and is_ours(module := resolve(path, node)):
            found += [f"{where(path, node.lineno)} imports {a.name} from {module}"
                      for a in node.names if is_private(a.name) or any(map(is_private, module.split(".")))]
        elif isinstance(node, ast.Import):
            found += [f"{where(path, node.lineno)} imports {a.name}" for a in node.names
                      if is_ours(a.name) and any(is_private(part) for part in a.name.split("."))]
    return found


def private_attribute_uses(path: Path, tree: ast.AST) -> list[str]:
    """``mod._name`` where ``mod`` is bound to one of the library's modules by an import in this file."""
    aliases = {}  # local name -> the library module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if is_library_module(a.name):  # ``import a.b`` binds ``a``, ``import a.b as c`` binds a.b
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(path, node)
            for a in node.names:
                if is_library_module(f"{base}.{a.name}"):
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
    return [f"{where(path, node.lineno)} uses {aliases[node.value.id]}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and is_private(node.attr)
            and isinstance(node.value, ast.Name) and node.value.id in aliases]


def private_definitions(trees: dict[Path, ast.AST]) -> dict[str, set[Path]]:
    """Private function, method and class names -> the files that define them."""
    defined: dict[str, set[Path]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, DEFINITIONS) and is_private(node.name):
                defined.setdefault(node.name, set()).add(path)
    return defined


def foreign_private_calls(path: Path, tree: ast.AST, defined: dict[str, set[Path]]) -> list[str]:
    """``obj._name`` (``obj`` not ``self``/``cls``) where ``_name`` is defined only in other library files,
    e.g. the Pruner calling ``self.analysis._check_ratio_patterns``."""
    return [f"{where(path, node.lineno)} uses {ast.unparse(node)}, private to "
            f"{', '.join(sorted(str(p.relative_to(ROOT)) for p in defined[node.attr]))}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr in defined
            and path not in defined[node.attr]
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def is_library_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of the library (as installed)."""
    for top, installed in sorted(LIBRARY.items(), key=lambda item: -len(item[1])):  # fxprune.deploy first
        if dotted == installed or dotted.startswith(installed + "."):
            rest = dotted[len(installed):].lstrip(".")
            base = ROOT.joinpath(top, *rest.split(".")) if rest else ROOT / top
            return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
    return False


# ---------------------------------------------------------------- the checks themselves
def test_scanners_see_relative_lazy_and_private_imports():
    """The scans below rely on this: relative imports resolve to installed names, lazy imports are seen."""
    source = textwrap.dedent("""
        import importlib
        from fxprune import prune as p
        from fxprune import cli as command_line
        from . import cli
        from ..deploy import lut
        from .planner import _chunk, Plan
        from ..measure._inputs import as_args
        from torch.utils._pytree import tree_map

        def lazy():
            import deploy.sweep
            importlib.import_module("fxprune.integrations")
            return p._plan_for_target, p.public, lut._OVERHEAD
    """)
    tree = ast.parse(source)
    in_core = ROOT / "fxprune" / "plan" / "search.py"
    found = {m for _, m in imported_modules(in_core, tree)}
    assert {"fxprune.plan.cli", "fxprune.deploy.lut", "fxprune.plan.planner", "deploy.sweep",
            "fxprune.integrations"} <= found
    upper = upper_layer_imports(in_core, tree)
    assert [u.rsplit(" ", 1)[1] for u in upper] == ["fxprune.cli", "fxprune.deploy", "fxprune.deploy.lut",
                                                    "deploy.sweep", "fxprune.integrations"], upper
    assert [u.split(" imports ")[1] for u in private_imports(in_core, tree)] == [
        "_chunk from fxprune.plan.planner", "as_args from fxprune.measure._inputs"]
    uses = private_attribute_uses(in_core, tree)
    assert [u.split(" uses ")[1] for u in uses] == ["fxprune.prune._plan_for_target",
                                                    "fxprune.deploy.lut._OVERHEAD"], uses
    pruner, analysis = ROOT / "fxprune" / "regularize" / "pruner.py", ROOT / "fxprune" / "analysis.py"
    trees = {pruner: ast.parse("def f(self):\n    self.analysis._check_ratio_patterns(r)\n    self._own()\n"
                               "def _own(): pass"),
             analysis: ast.parse("class Analysis:\n    def _check_ratio_patterns(self, r): pass")}
    calls = foreign_private_calls(pruner, trees[pruner], private_definitions(trees))
    assert [c.split(" uses ")[1] for c in calls] == [
        "self.analysis._check_ratio_patterns, private to fxprune/analysis.py"], calls
    in_deploy_init = ROOT / "deploy" / "__init__.py"
    relative = ast.parse("from .lut import x\nfrom .. import prune").body
    assert resolve(in_deploy_init, relative[0]) == "fxprune.deploy.lut"
    assert resolve(in_deploy_init, relative[1]) == "fxprune"
    assert module_name(ROOT / "deploy" / "backends" / "ort.py") == "fxprune.deploy.backends.ort"
    assert is_library_module("fxprune.deploy.lut") and not is_library_module("fxprune.deploy.no_such")


# ---------------------------------------------------------------- one installed package
def test_only_fxprune_is_installed_at_top_level(tmp_path):
    """From a folder outside the clone, ``deploy`` and ``integrations`` are not importable on their own;
    ``fxprune.deploy`` and ``fxprune.integrations`` are, they are this clone's folders, and a user's own
    ``deploy.py`` / ``integrations/`` in the working directory does not shadow them."""
    code = textwrap.dedent("""
        import importlib, pathlib
        for name in ("deploy", "integrations"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                print("absent", name)
        pathlib.Path("deploy.py").write_text("USER = True")
        pathlib.Path("integrations").mkdir()
        pathlib.Path("integrations/__init__.py").write_text("USER = True")
        importlib.invalidate_caches()
        import deploy, integrations
        print("user modules", deploy.USER, integrations.USER)
        import fxprune.deploy, fxprune.integrations
        print("file", fxprune.deploy.__file__)
        print("file", fxprune.integrations.__file__)
        print("export_onnx", fxprune.deploy.export_onnx.__module__)
    """)
    assert ROOT not in tmp_path.resolve().parents
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[:3] == ["absent deploy", "absent integrations", "user modules True True"], res.stdout
    files = [Path(line.split(" ", 1)[1]) for line in lines if line.startswith("file ")]
    assert files == [ROOT / "deploy" / "__init__.py", ROOT / "integrations" / "__init__.py"], files
    assert lines[-1].startswith("export_onnx fxprune.deploy."), lines[-1]


# ---------------------------------------------------------------- imports in one direction
def core_files() -> list[Path]:
    """fxprune/* except fxprune/cli."""
    return [p for p in library_files("fxprune") if not p.is_relative_to(ROOT / "fxprune" / "cli")]


def test_core_does_not_import_deploy_integrations_or_cli():
    files = core_files()
    assert ROOT / "fxprune" / "prune.py" in files and ROOT / "fxprune" / "cli" / "__init__.py" not in files
    offending = sorted({hit for path in files for hit in upper_layer_imports(path, parse(path))})
    assert not offending, "the core imports a layer above it:\n" + "\n".join(offending)


def test_no_private_name_is_imported_from_another_module():
    offending = [hit for path in library_files() for hit in private_imports(path, parse(path))]
    assert not offending, "private names imported across modules:\n" + "\n".join(offending)


def test_no_private_name_of_another_library_module_is_used_through_its_module():
    """``from fxprune import prune as p; p._plan_for_target(...)`` shares a private name all the same."""
    offending = [hit for path in library_files() for hit in private_attribute_uses(path, parse(path))]
    assert not offending, "private names used across modules:\n" + "\n".join(offending)


def test_no_private_function_of_another_library_file_is_called():
    trees = {path: parse(path) for path in library_files()}
    defined = private_definitions(trees)
    offending = [hit for path, tree in trees.items() for hit in foreign_private_calls(path, tree, defined)]
    assert not offending, "private names of other files used:\n" + "\n".join(offending)


# ---------------------------------------------------------------- short files, regular packages
def test_no_library_file_over_400_lines():
    too_long = {str(p.relative_to(ROOT)): n for p in library_files()
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"library files over {MAX_LINES} lines: {too_long}"


def library_folders() -> list[Path]:
    """Every folder holding library files, from each top-level folder down."""
    folders = set()
    for path in library_files():
        top = ROOT / path.relative_to(ROOT).parts[0]
        folders.update(p for p in path.parents if p == top or top in p.parents)
    return sorted(folders)


def test_every_library_folder_is_a_regular_package():
    folders = library_folders()
    assert ROOT / "fxprune" / "groups" in folders and ROOT / "deploy" / "backends" in folders
    missing = [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()]
    assert not missing, f"folders without __init__.py (namespace packages): {missing}"


def test_every_library_folder_is_in_the_package_list():
    """pyproject.toml lists the packages explicitly: a folder missing from the list is not installed."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"] == {"fxprune.deploy": "deploy", "fxprune.integrations": "integrations"}
    expected = {module_name(f / "__init__.py") for f in library_folders()}
    assert not expected - listed, f"packages missing from pyproject.toml: {sorted(expected - listed)}"
    assert not listed - expected, f"listed packages with no folder: {sorted(listed - expected)}"
