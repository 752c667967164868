"""The package layering: imports only run downward, and no import cycles.

    cpd  ->  spl  ->  tfrecords_tools        (benchmarks and tests on top)

`python -m spl.main` trains both methods without `spl` importing `cpd`: CPD's
gin files bring `cpd.configurables` in with gin's `import` statement. Every
import counts, also one inside a function (a hidden cycle is still a cycle);
the only exception is a module importing itself under `__main__` so that
pickled objects name the importable module (the Beam tools, the decoder
child).
"""

import ast
import os
from typing import Dict, List, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ('tfrecords_tools', 'spl', 'cpd')  # Lowest first.


def _modules() -> Dict[str, str]:
  out = {}
  for package in LAYERS:
    for folder, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(folder, name)
          rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
          out[rel[:-len('.__init__')] if rel.endswith('.__init__')
              else rel] = path
  return out


def _is_main_block(node: ast.AST) -> bool:
  test = getattr(node, 'test', None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and
          isinstance(test.left, ast.Name) and test.left.id == '__name__')


def _imports(path: str, modules: Dict[str, str], me: str) -> Set[str]:
  """Project modules `path` imports anywhere (self-imports under __main__
  excepted)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  main_nodes = set()
  for node in ast.walk(tree):
    if _is_main_block(node):
      main_nodes.update(id(n) for n in ast.walk(node))
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f'{node.module}.{a.name}' for a in node.names]
      names = [n if n in modules else node.module for n in names]
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition('.')[0]
      if not name or (name == me and id(node) in main_nodes):
        continue
      if name != me:
        found.add(name)
  return found


def _graph() -> Dict[str, Set[str]]:
  modules = _modules()
  return {m: _imports(p, modules, m) for m, p in modules.items()}


def _layer(module: str) -> int:
  return LAYERS.index(module.split('.')[0])


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_imports_only_run_downward():
  upward = sorted(f'{m} -> {t}' for m, targets in _graph().items()
                  for t in targets if _layer(t) > _layer(m))
  assert not upward, ('imports must run cpd -> spl -> tfrecords_tools; '
                      'upward:\n' + '\n'.join(upward))


def test_no_import_cycles():
  cycles = _cycles(_graph())
  assert not cycles, 'import cycles: ' + '; '.join(
      ' <-> '.join(c) for c in cycles)


def test_the_checks_see_what_they_must(tmp_path):
  # Function-level and `from package import module` imports count; a
  # self-import under __main__ does not, elsewhere it does.
  source = tmp_path / 'mod.py'
  source.write_text(
      'from spl import losses\n'
      'def f():\n'
      '  from cpd import nce  # hidden\n'
      '  import tfrecords_tools.schema\n'
      'if __name__ == "__main__":\n'
      '  from spl import metrics\n')
  modules = _modules()
  assert _imports(str(source), modules, 'spl.metrics') == {
      'spl.losses', 'cpd.nce', 'tfrecords_tools.schema'}
  assert _imports(str(source), modules, 'spl.other') == {
      'spl.losses', 'cpd.nce', 'tfrecords_tools.schema', 'spl.metrics'}
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      ['a', 'b', 'c']]
  assert _layer('cpd.nce') > _layer('spl.losses') > _layer(
      'tfrecords_tools.schema')
