"""The codebase's shape, checked: every sslx import at the top of its module, and no import
cycle between sslx modules (the graph of `import sslx.x` / `from sslx import x` edges)."""

import ast
import pathlib

import pytest

SSLX = pathlib.Path(__file__).resolve().parents[1] / "sslx"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(SSLX.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in SSLX.rglob("*.py")}


def _imports(tree: ast.AST, modules: set[str]):
  """(sslx module imported, is it at module level) for each import statement."""
  top = {id(n) for n in tree.body}
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name.startswith("sslx"):
        yield name, id(node) in top


def test_sslx_imports_are_at_module_top():
  modules = _modules()
  inner = [
    f"{name} imports {target}"
    for name, path in modules.items()
    for target, at_top in _imports(ast.parse(path.read_text()), set(modules))
    if not at_top
  ]
  assert not inner, "function-level imports of sslx modules:\n" + "\n".join(inner)


def test_no_import_cycle():
  modules = _modules()
  graph = {
    name: {t for t, _ in _imports(ast.parse(path.read_text()), set(modules)) if t != name}
    for name, path in modules.items()
  }
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for m in sorted(graph[n]):
      if state.get(m) == "open":
        cycle = stack[stack.index(m) :] + [m]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if m not in state:
        visit(m)
    stack.pop()
    state[n] = "done"

  for n in sorted(graph):
    if n not in state:
      visit(n)
