"""The layering of DESIGN.md, checked on the imports themselves: engines (simulator, bridge) ->
scenarios -> protocols -> clients / topologies -> kernels; no two top-level folders import each
other, and neither engine imports the other; Hydra's plugins (the Ray launcher) import nothing
of the project."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ALLOWED = {
    "kernels": set(),
    "topologies": set(),
    "clients": {"kernels"},
    "protocols": {"kernels", "clients", "topologies"},
    "scenarios": {"kernels", "clients", "topologies", "protocols"},
    "simulator": {"kernels", "clients", "topologies", "protocols", "scenarios"},
    "bridge": {"kernels", "clients", "topologies", "protocols", "scenarios"},
    "hydra_plugins": set(),  # the Ray launcher: Hydra imports it while scanning for plugins
}


def project_imports(package: str) -> dict[str, set[str]]:
    """{file: top-level project packages it imports}, function-level imports included."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names} & set(ALLOWED)
        out[str(path.relative_to(ROOT))] = found - {package}
    return out


@pytest.mark.parametrize("package", list(ALLOWED))
def test_imports_point_down_only(package):
    bad = {f: sorted(found - ALLOWED[package]) for f, found in project_imports(package).items()
           if found - ALLOWED[package]}
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}; found {bad}"
