"""Package boundaries, read from the sources (AST): every import statement of every .py file counts,
including the lazy ones inside functions.

* ``core`` (the library) imports no service code and no web/queue client;
* ``service`` (what gateway and workers share) imports neither the gateway, nor the workers, nor a web
  framework;
* ``worker`` imports no ``api`` module;
* ``api`` (the gateway) imports no ``worker`` module and no torch (nor ``core``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB_AND_QUEUE = {"fastapi", "starlette", "uvicorn", "celery", "kombu", "redis", "boto3", "botocore"}
FORBIDDEN: dict[str, set[str]] = {
    "core": {"api", "service", "worker"} | WEB_AND_QUEUE,
    "service": {"api", "worker", "core", "torch", "fastapi", "starlette", "uvicorn"},
    "worker": {"api"},
    "api": {"worker", "core", "torch"},
}
# The sanctioned edges: `veil keys` (core/cli.py) runs the key manager, imported lazily and only there; the
# job view types the job's report by the report contract, core/report.py (pydantic only, see
# test_the_report_contract_needs_no_torch).
ALLOWED: set[tuple[str, str]] = {("core/cli.py", "service.keys"), ("service/views.py", "core.report")}


def imports(source: str, package: tuple[str, ...]) -> set[str]:
    """Every module an import statement of ``source`` (a module of ``package``) names, relative imports
    resolved to absolute ones."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found.add(base)
    return found


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundary(package: str) -> None:
    files = sources(package)
    assert files, f"no sources under {package}/"
    violations = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        package_parts = path.relative_to(ROOT).parts[:-1]
        for module in sorted(imports(path.read_text(encoding="utf-8"), package_parts)):
            if module.split(".")[0] in FORBIDDEN[package] and (rel, module) not in ALLOWED:
                violations.append(f"{rel}: import {module}")
    assert not violations, "\n".join(violations)


def test_the_ast_scan_sees_lazy_and_relative_imports() -> None:
    """The scanner itself: imports inside functions and the relative forms are found."""
    source = "def f():\n    import redis.client\n    from api.keys import main\n\nfrom . import a\nfrom ..x import y\n"
    assert imports(source, ("core", "train")) == {"redis.client", "api.keys", "core.train", "core.x"}


def test_api_imports_no_torch() -> None:
    """And at run time: importing the whole gateway loads neither torch nor core."""
    pytest.importorskip("fastapi")
    code = "import api.main, sys; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=ROOT)
    mods = {line.split(".")[0] for line in out.stdout.splitlines()}
    assert "fastapi" in mods and "service" in mods
    assert "torch" not in mods
    # of core, only the report contract (and its package's empty __init__)
    assert {m for m in out.stdout.splitlines() if m.split(".")[0] == "core"} <= {"core", "core.report"}


def test_the_report_contract_needs_no_torch() -> None:
    """core/report.py, which the service layer imports, imports only the standard library and pydantic."""
    path = ROOT / "core" / "report.py"
    found = {m.split(".")[0] for m in imports(path.read_text(encoding="utf-8"), ("core",))}
    assert found <= {"__future__", "typing", "pydantic"}, found
    assert imports((ROOT / "core" / "__init__.py").read_text(encoding="utf-8"), ("core",)) == set()


def test_generator_networks_sit_below_the_methods() -> None:
    """core.generators (the one-pass methods' networks and helpers) imports no core.methods module: the
    registry (core.methods) registers every method without an import circle."""
    violations = [
        f"{path.relative_to(ROOT).as_posix()}: import {module}"
        for path in sources("core/generators")
        for module in imports(path.read_text(encoding="utf-8"), path.relative_to(ROOT).parts[:-1])
        if module == "core.methods" or module.startswith("core.methods.")
    ]
    assert not violations, "\n".join(violations)
