"""The repository layout of DESIGN.md, and the reason platform/ has no __init__.py."""

import ast
import subprocess
import sys
import sysconfig

from conftest import REPO


def test_platform_folder_is_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists(), "platform/__init__.py shadows the stdlib module 'platform'"


def test_import_platform_is_stdlib_from_repo_root():
    # the repo root on sys.path (python -m jobs.x, Ray working_dir) must not shadow stdlib `platform`
    code = "import platform, uuid; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    path, version = out.split()
    assert path.startswith(sysconfig.get_paths()["stdlib"]), path
    assert version == ".".join(map(str, sys.version_info[:3]))


def test_design_layout_is_visible():
    for folder in ["platform/llava_platform", "jobs", "serve_apps", "cluster", "benchmarks", "experiments", "tests"]:
        assert (REPO / folder).is_dir(), folder
    for package in ["config.py", "model", "data", "inference"]:
        assert (REPO / "platform" / "llava_platform" / package).exists(), package


LIBRARY = REPO / "platform" / "llava_platform"


def _module_name(path) -> str:
    """platform/llava_platform/model/builder.py -> llava_platform.model.builder (a package: its __init__'s name)."""
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library_imports() -> tuple[dict[str, set[str]], list[str]]:
    """The library's import graph ({module: library modules it imports}, top level and inside functions alike)
    and every use of a sibling module's private name ('module:line: what')."""
    paths = {_module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    private: list[str] = []
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> the library module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "llava_platform":
                        graph[name].add(alias.name)
                        local = alias.asname or alias.name.split(".")[0]
                        aliases[local] = alias.name if alias.asname else "llava_platform"
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}".rstrip(".")
                if base.split(".")[0] != "llava_platform":
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in paths:  # from llava_platform.model import builder
                        graph[name].add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                    else:
                        graph[name].add(base)
                        if _is_private(alias.name):
                            private.append(f"{name}:{node.lineno}: from {base} import {alias.name}")
        for node in ast.walk(tree):  # module._name, llava_platform.model.builder._name
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                chain, value = [], node.value
                while isinstance(value, ast.Attribute):
                    chain.insert(0, value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id in aliases:
                    owner = ".".join([aliases[value.id], *chain])
                    if owner in paths and owner != name:
                        private.append(f"{name}:{node.lineno}: {owner}.{node.attr}")
    for name in graph:
        graph[name] = {m for m in graph[name] if m in paths and m != name}
    return graph, private


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_library_imports_form_no_cycle_and_use_no_private_names():
    # a one-way chain (STYLE 14): function-level imports count, so a cycle cannot hide inside a function
    graph, private = _library_imports()
    assert sum(map(len, graph.values())) > 50, "the parser found almost no library imports"
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    data_to_model = {f"{m} -> {t}" for m, ts in graph.items() if m.startswith("llava_platform.data")
                     for t in ts if t.startswith("llava_platform.model")}  # fmt: skip
    assert not data_to_model, f"data must not import model (model imports data): {sorted(data_to_model)}"
    assert not private, "a sibling's private name (make it public with a docstring, or move it): " + "; ".join(private)


PRODUCT = ["platform/llava_platform", "jobs", "serve_apps", "benchmarks"]  # what users run; experiments/ is research


def _imported_roots(path) -> set[str]:
    """The top-level names a Python file imports (`import a.b`, `from a.b import c` -> "a"), at any depth."""
    import ast

    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_product_does_not_import_the_experiments():
    # experiments/ imports the product, never the other way (DESIGN: "nothing imports it")
    importers = [str(p.relative_to(REPO)) for folder in PRODUCT for p in sorted((REPO / folder).rglob("*.py"))
                 if "experiments" in _imported_roots(p)]  # fmt: skip
    assert not importers, f"the product imports experiments: {importers}"
    scripts = [str(p.relative_to(REPO)) for folder in PRODUCT for p in sorted((REPO / folder).rglob("*.sh"))
               if "experiments" in p.read_text()]  # fmt: skip
    assert not scripts, f"product scripts run experiments: {scripts}"


def test_the_tiny_recipe_research_lives_in_experiments():
    moved = {"platform/llava_platform/data/varied_scenes.py": "experiments/tiny_recipe/varied_scenes.py",
             "platform/llava_platform/data/drills.py": "experiments/tiny_recipe/drills.py",
             "jobs/refresh_base.py": "experiments/tiny_recipe/refresh_base.py",
             "benchmarks/position_readout.py": "experiments/tiny_recipe/position_readout.py",
             **{f"benchmarks/{name}.py": f"experiments/tiny_recipe/transfer_sets/{name}.py"
                for name in ("grid_scenes", "free_scenes", "sealed_scenes")}}  # fmt: skip
    for old, new in moved.items():
        assert not (REPO / old).exists() and (REPO / new).is_file(), (old, new)
    assert (REPO / "experiments" / "README.md").is_file()
