"""Lists the benchmarks (`make bench`); each runs alone as `python -m benchmarks.<name>`.

They are not run in sequence here: each takes minutes and prints ratios
against references measured in its own run, which is only meaningful on a
machine that is otherwise idle.
"""

import ast
import os
import pkgutil

import benchmarks


def main():
  names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                 if m.name.startswith('bench_'))
  print('Benchmarks (run each with `python -m benchmarks.<name> --help`):')
  for name in names:
    # Docstrings are read, not imported: the modules define absl flags of
    # the same names (--steps, --repeats), which one process cannot hold.
    path = os.path.join(os.path.dirname(benchmarks.__file__), name + '.py')
    with open(path) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ''
    print(f'  {name:24s} {doc.strip().splitlines()[0] if doc else ""}')


if __name__ == '__main__':
  main()
