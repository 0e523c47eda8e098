"""The import rules of docs/architecture.md: every module of ambient_mri/ has a layer, imports nothing from a higher
layer, and the imports form no circle; the package imports light and hides no __import__."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ambient_mri"


def layers() -> dict[str, int]:
    """{module prefix: layer} from the table in docs/architecture.md."""
    out = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|(.*?)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                out[name if name == "ambient_mri" else f"ambient_mri.{name}"] = int(m.group(1))
    assert out, "docs/architecture.md has no layer table"
    return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, table: dict[str, int]) -> int | None:
    best = None
    for prefix, layer in table.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def imports(path: Path) -> set[str]:
    """ambient_mri / data_tools modules imported anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (ROOT / sub.replace(".", "/")).is_dir()
                out.add(sub if is_module else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.split(".")[0] in ("ambient_mri", "data_tools") and m != me}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PKG.rglob("*.py"))}


def violations(g: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    bad = []
    for module, deps in g.items():
        mine = layer_of(module, table)
        if mine is None:
            bad.append(f"{module} has no layer in docs/architecture.md: add it to the table")
            continue
        for dep in deps:
            if dep.startswith("data_tools"):
                if mine < 7:
                    bad.append(f"{module} (layer {mine}) imports {dep}: only layer 7 wires data_tools in")
                continue
            theirs = layer_of(dep, table)
            if theirs is None or theirs > mine:
                bad.append(f"{module} (layer {mine}) imports {dep} (layer {theirs})")
    return bad


def circle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d in g and state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d in g and d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in g:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_layer_and_imports_only_downwards():
    bad = violations(graph(), layers())
    assert not bad, "imports that break docs/architecture.md:\n" + "\n".join(bad)


def test_no_import_circle():
    found = circle(graph())
    assert found is None, "import circle: " + " -> ".join(found)


def test_the_checks_catch_a_planted_violation():
    """The checkers themselves: a planted upward import and a planted circle are reported."""
    table = layers()
    assert layer_of("ambient_mri.sampling.policy", table) == 4 and layer_of("ambient_mri.recon", table) == 6
    planted = PKG / "operators" / "planted_for_test.py"  # a layer-1 module that imports the MRI front end
    planted.write_text("def f():\n    from ..recon import reconstruct\n")
    try:
        g = graph()
    finally:
        planted.unlink()
    assert "ambient_mri.recon" in g["ambient_mri.operators.planted_for_test"]
    assert any("planted_for_test (layer 1) imports ambient_mri.recon (layer 6)" in v for v in violations(g, table))
    g["ambient_mri.metrics"] = g["ambient_mri.metrics"] | {"ambient_mri.masks"}
    g["ambient_mri.masks"] = g["ambient_mri.masks"] | {"ambient_mri.metrics"}
    assert circle(g) is not None


def test_no_hidden_dunder_import():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PKG.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "__import__(" in line]
    assert not hits, hits


def test_import_ambient_mri_is_light():
    """`import ambient_mri` loads the operators, not the trainer, the samplers, h5py or sigpy; the rest loads on
    first use (``am.reconstruct``, ``am.masks``, ...)."""
    code = ("import sys, ambient_mri as am; heavy = [m for m in ('ambient_mri.training.trainer', 'ambient_mri.recon', "
            "'ambient_mri.sampling', 'h5py', 'sigpy', 'skimage') if m in sys.modules]; print(heavy); "
            "am.masks.kspace_mask; am.reconstruct; print('ambient_mri.recon' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


def test_package_version_matches_pyproject():
    """Output files record ``ambient_mri.__version__``: it must be the version pip installed."""
    import ambient_mri

    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == ambient_mri.__version__
