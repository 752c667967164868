r"""Mutation testing of the modules that carry the science and the data safety.

Plants small plausible bugs (mutants) one at a time with mutmut and runs the
module's fast tests against each: a mutant that no test fails on ("survived")
is a bug the suite would let through, or a change of no behaviour
(equivalent). Not part of CI (a module takes minutes to tens of minutes on two
cores); run it after changing a module or its tests:

  make mutation                                  # every module below
  make mutation MODULES=losses                   # one module
  python -m tests.mutation --modules=nce,memory_bank --max_children=2

Each module runs in its own copy of the working tree (tracked and untracked,
non-ignored files) under --work_dir, so the checkout never holds a mutant.
Per module it writes `<work_dir>/<module>/survivors.md` (the diff of every
surviving mutant) and prints a score line; `<work_dir>/scores.json` collects
the scores. Install the tool with `pip install -e '.[mutation]'`.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Target:
  """One module to mutate and the fast tests that guard it."""
  source: str
  tests: Tuple[str, ...]
  # mutmut mutant-name globs restricting the mutants to these functions (the
  # parts of a large module this target is about); empty = the whole file.
  functions: Tuple[str, ...] = ()
  # pytest -k expression leaving out tests too slow to run once per mutant
  # (whole trainer runs); they still run in `make test`.
  select: str = ''


# The modules with fast tests whose bugs matter most (issue 21's list).
TARGETS: Dict[str, Target] = {
    'label_spaces': Target('tfrecords_tools/label_spaces.py',
                           ('tests/test_label_spaces.py',)),
    'losses': Target('spl/losses.py', ('tests/test_losses.py',)),
    'data_parameters': Target(
        'spl/data_parameters.py', ('tests/test_data_parameters.py',),
        select='not spl_main and not resume and not mirrored'),
    'metrics': Target('spl/metrics.py', ('tests/test_metrics.py',)),
    # The NCE maths against float64 references; the train step (whose
    # replica scaling only multi-replica runs can show) on its own with the
    # distributed tests, seconds per mutant.
    'nce': Target('cpd/nce.py', ('tests/test_cpd_nce.py',
                                 'tests/test_cpd_objectives.py',
                                 'tests/test_nce_contracts.py')),
    'cpd_step': Target('cpd/train_step.py', ('tests/test_cpd_distributed.py',
                                             'tests/test_cpd_objectives.py',
                                             'tests/test_cpd_step_modes.py')),
    'memory_bank': Target('cpd/memory_bank.py',
                          ('tests/test_cpd_nce.py',
                           'tests/test_cpd_objectives.py')),
    'baselines': Target('cpd/baselines.py', ('tests/test_cpd_objectives.py',)),
    'optimization': Target('spl/optimization.py',
                           ('tests/test_schedules.py', 'tests/test_plateau.py'),
                           select='not trainer'),
    'manifest': Target('tfrecords_tools/manifest.py',
                       ('tests/test_manifest.py', 'tests/test_write_clips.py')),
    # The record rewrite: pass 1's per-shard contexts, the clip/prediction
    # match, the sharding, pass 2's rewrite. The side files and plots
    # (`_finish`) are left out: their mutants cost ~200 more Beam runs.
    'relabel_rewrite': Target(
        'tfrecords_tools/relabel.py', ('tests/test_relabel_units.py',
                                       'tests/test_relabel.py'),
        functions=('*x_rewrite_shard*', '*_Pass1Fn*', '*_MatchClips*',
                   '*_ShardClips*')),
    'input_sampling': Target(
        'spl/inputs/sample.py', ('tests/test_input_pipeline.py',),
        select='window or frame_indices or start or middle or views or crops'),
}

# Lines whose mutants change only what is logged or the wording of an error
# (tests match errors on their key words; a mutant that rewrites the message
# text says nothing about the code's behaviour): logging calls, `raise` lines
# and lines holding nothing but a string (a message's continuation).
_NOT_MUTATED = (r'^\s*(absl_)?logging\.', r'^\s*print\(', r'^\s*raise ',
                r'^\s*f?(\'[^\']*\'|"[^"]*")\)*[,;]?\s*$')

_STATUS = re.compile(r'^\s+(\S+): (.+)$')


def _source_files() -> List[str]:
  out = subprocess.run(
      ['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
      cwd=REPO, check=True, capture_output=True, text=True).stdout
  return [p for p in out.splitlines() if os.path.isfile(os.path.join(REPO, p))]


def _copy_tree(dst: str) -> None:
  if os.path.exists(dst):
    shutil.rmtree(dst)
  for rel in _source_files():
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    shutil.copy2(os.path.join(REPO, rel), os.path.join(dst, rel))


def _setup_cfg(target: Target) -> str:
  package = target.source.split('/')[0]
  others = sorted({'spl', 'cpd', 'tfrecords_tools', 'gin_configs',
                   'benchmarks'} - {package})
  tests = [t for t in target.tests if os.path.exists(os.path.join(REPO, t))]

  def block(values):
    return ''.join(f'\n    {v}' for v in values)

  return ('[mutmut]\n'
          f'source_paths={package}/\n'
          f'only_mutate={target.source}\n'
          f'pytest_add_cli_args_test_selection='
          f'{block(tests + (["-k", target.select] if target.select else []))}\n'
          f'pytest_add_cli_args={block(["-m", "not slow", "-x", "-q"])}\n'
          f'do_not_mutate_patterns={block(_NOT_MUTATED)}\n'
          f'also_copy={block(others)}\n'
          'process_isolation=forkserver\n')


def _mutmut(args: Sequence[str], cwd: str, log, stream: bool = False) -> str:
  """Runs `mutmut <args>` in `cwd`; its output goes to `log` (as it comes when
  `stream`, for the long `run`: `tail -f` the log to watch progress)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  log.flush()
  proc = subprocess.run([sys.executable, '-m', 'mutmut', *args], cwd=cwd,
                        env=env, stdout=log if stream else subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
  output = '' if stream else proc.stdout
  log.write(output)
  if proc.returncode:
    raise RuntimeError(f'mutmut {" ".join(args)} failed in {cwd} (exit '
                       f'{proc.returncode}); see {log.name}')
  return output


def run_target(name: str, work_dir: str, max_children: int) -> Dict:
  """Mutates one target; returns its counts and writes survivors.md."""
  target = TARGETS[name]
  work = os.path.join(work_dir, name)
  _copy_tree(work)
  with open(os.path.join(work, 'setup.cfg'), 'w') as f:
    f.write(_setup_cfg(target))
  start = time.time()
  with open(os.path.join(work, 'mutmut.log'), 'w') as log:
    _mutmut(['run', '--max-children', str(max_children),
             *target.functions], work, log, stream=True)
    results = _mutmut(['results', '--all', 'true'], work, log)
    statuses = {}
    for line in results.splitlines():
      m = _STATUS.match(line)
      if m and _selected(m.group(1), target):
        statuses[m.group(1)] = m.group(2)
    survivors = sorted(k for k, v in statuses.items() if v == 'survived')
    with open(os.path.join(work, 'survivors.md'), 'w') as out:
      out.write(f'# Surviving mutants of {target.source}\n\n')
      for mutant in survivors:
        out.write(_mutmut(['show', mutant], work, log) + '\n')
  counts: Dict[str, int] = {}
  for status in statuses.values():
    counts[status] = counts.get(status, 0) + 1
  killed = counts.get('killed', 0) + counts.get('timeout', 0)
  tested = killed + counts.get('survived', 0)
  return {'module': name, 'source': target.source, 'counts': counts,
          'score': round(killed / tested, 4) if tested else None,
          'survivors': survivors, 'seconds': round(time.time() - start)}


def _selected(mutant: str, target: Target) -> bool:
  if not target.functions:
    return True
  import fnmatch  # pylint: disable=g-import-not-at-top
  return any(fnmatch.fnmatch(mutant, g) for g in target.functions)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--modules', default='',
                      help='comma-separated names (default: all): '
                      + ', '.join(TARGETS))
  parser.add_argument('--work_dir', default='/tmp/weakvideo_mutation')
  parser.add_argument('--max_children', type=int, default=os.cpu_count())
  args = parser.parse_args(argv)
  names = [n for n in args.modules.split(',') if n] or list(TARGETS)
  unknown = [n for n in names if n not in TARGETS]
  if unknown:
    parser.error(f'unknown module(s) {unknown}; known: {sorted(TARGETS)}')
  try:
    import mutmut  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    parser.error("mutmut is not installed: pip install -e '.[mutation]'")
  os.makedirs(args.work_dir, exist_ok=True)
  scores_path = os.path.join(args.work_dir, 'scores.json')
  scores = {}
  if os.path.exists(scores_path):
    with open(scores_path) as f:
      scores = json.load(f)
  for name in names:
    print(f'[mutation] {name}: mutating {TARGETS[name].source} ...',
          flush=True)
    result = run_target(name, args.work_dir, args.max_children)
    scores[name] = result
    with open(scores_path + '.tmp', 'w') as f:
      json.dump(scores, f, indent=1)
    os.replace(scores_path + '.tmp', scores_path)
    c = result['counts']
    print(f'[mutation] {name}: score {result["score"]} '
          f'(killed {c.get("killed", 0)}, survived {c.get("survived", 0)}, '
          f'timeout {c.get("timeout", 0)}, no tests {c.get("no tests", 0)}) '
          f'in {result["seconds"]} s; survivors: '
          f'{os.path.join(args.work_dir, name, "survivors.md")}', flush=True)


if __name__ == '__main__':
  main()
