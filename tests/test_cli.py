"""The tools' command lines (issue: what a user sees): `--help`, refusals,
Beam options after `--`, flagfiles; every entry point as a real subprocess."""

import os
import subprocess
import sys

from absl import flags
import pytest

from cpd import demo as cpd_demo
from cpd import evaluate as cpd_evaluate
from cpd import title_stats
from cpd import title_tree
from spl import attention_maps
from spl import demo as spl_demo
from spl import export
from spl import main as spl_main
from spl import predict_video
from tfrecords_tools import cli
from tfrecords_tools import dask_cluster
from tfrecords_tools import holdout
from tfrecords_tools import inspect as inspect_lib
from tfrecords_tools import relabel
from tfrecords_tools import write_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module, its flag definitions, and flags that make a complete command line
# writing into OUT (positional arguments too).
TOOLS = {
    'tfrecords_tools.write_clips': (write_clips._define_flags, [
        '--manifest=IN/m.csv', '--output_dir=OUT']),
    'tfrecords_tools.relabel': (relabel._define_flags, [
        "--records=IN/clips-*.tfrecord", "--predictions=IN/p-*.tfrecord",
        '--variant=spl', '--output_dir=OUT']),
    'tfrecords_tools.holdout': (holdout._define_flags, [
        "--records=IN/clips-*.tfrecord", '--num_pairs=1', '--output_dir=OUT']),
    'tfrecords_tools.inspect': (inspect_lib._define_flags, [
        'IN/clips-*.tfrecord', '--contact_sheet=OUT/sheet.png']),
    'tfrecords_tools.dask_cluster': (dask_cluster._define_flags, [
        '--workers=1', '--port=0', '--scheduler_file=OUT/scheduler.json']),
    'cpd.title_tree': (title_tree._define_flags, [
        '--spacy_pipeline=IN/pipeline', '--titles=IN/t.txt',
        '--output=OUT/t.txt']),
    'cpd.title_stats': (title_stats._define_flags, [
        '--classes=IN/c.txt', '--titles=IN/t.txt',
        '--output_json=OUT/s.json']),
    # The gin entry points and the tools that use a trained model.
    'spl.main': (spl_main._define_flags, [
        '--gin_file=IN/run.gin', '--model_dir=OUT']),
    'cpd.evaluate': (cpd_evaluate._define_flags, [
        '--protocol=knn', '--output_dir=OUT']),
    'spl.export': (export._define_flags, [
        '--model_dir=IN', '--output_dir=OUT']),
    'spl.predict_video': (predict_video._define_flags, [
        '--model_dir=IN', 'IN/a.mp4', 'IN/b.mp4',
        '--output_json=OUT/p.json']),
    'spl.attention_maps': (attention_maps._define_flags, [
        '--model_dir=IN', '--records=IN/*.tfrecord', '--output_dir=OUT']),
    'spl.demo': (spl_demo._define_flags, ['--size=tiny', '--output_dir=OUT']),
    'cpd.demo': (cpd_demo._define_flags, ['--size=tiny', '--output_dir=OUT']),
}

# What a user mistypes, per tool, and the flag the error must name.
MISSPELT = {
    'tfrecords_tools.write_clips': ('--num_shard=2', "'num_shard'",
                                    'num_shards'),
    'tfrecords_tools.relabel': ('--src=0.5', "'src'", 'scr'),
    'tfrecords_tools.holdout': ('--num_pair=3', "'num_pair'", 'num_pairs'),
    'tfrecords_tools.inspect': ('--sheet_clip=2', "'sheet_clip'",
                                'sheet_clips'),
    'tfrecords_tools.dask_cluster': ('--worker=2', "'worker'", 'workers'),
    'cpd.title_tree': ('--batchsize=2', "'batchsize'", 'batch_size'),
    'cpd.title_stats': ('--variant=clean', "'variant'", 'variants'),
    'spl.main': ('--gin_files=IN/run.gin', "'gin_files'", 'gin_file'),
    'cpd.evaluate': ('--protocl=knn', "'protocl'", 'protocol'),
    'spl.export': ('--class_name=a.json', "'class_name'", 'class_names'),
    'spl.predict_video': ('--topk=3', "'topk'", 'top_k'),
    'spl.attention_maps': ('--num_clip=2', "'num_clip'", 'num_clips'),
    'spl.demo': ('--sizes=tiny', "'sizes'", 'size'),
    'cpd.demo': ('--seeds=1', "'seeds'", 'seed'),
}

BEAM_TOOLS = ('tfrecords_tools.write_clips', 'tfrecords_tools.relabel',
              'tfrecords_tools.holdout')
# relabel and inspect import TensorFlow (4-5 s of CPU per run): the cases
# that differ only in the shared parser (`cli`) run on the light tools.
LIGHT_BEAM_TOOL = 'tfrecords_tools.write_clips'


def _name(module):
  """The tool's name in its messages: the Beam tools and title tools by
  their short name, the gin entry points and model tools by module."""
  if module.startswith(('tfrecords_tools.', 'cpd.title_')):
    return module.split('.')[-1]
  return module


def _own_flags(define):
  fv = flags.FlagValues()
  define(fv)
  return list(fv)


def _args(module, tmp):
  return [a.replace('IN', str(tmp / 'in')).replace('OUT', str(tmp / 'out'))
          for a in TOOLS[module][1]]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Every command of the tests below, run at once (imports take seconds).

  Keys: (module, case); values: (CompletedProcess, its tmp dir).
  """
  cases = {}
  for module in TOOLS:
    cases[(module, 'help')] = ['--help']
    cases[(module, 'misspelt')] = ['ARGS', MISSPELT[module][0]]
  # relabel printed "Flag --records must have a value" without its flags and
  # ran the job with them, ignoring --help.
  for module in BEAM_TOOLS:
    cases[(module, 'help_with_flags')] = ['ARGS', '--help']
  module = LIGHT_BEAM_TOOL
  cases[(module, 'helpfull')] = ['--helpfull']
  cases[(module, 'unknown')] = ['ARGS', '--bogus_flag=1']
  cases[(module, 'beam_unknown')] = ['ARGS', '--', '--projetc=P']
  cases[(module, 'beam_own_flag')] = ['ARGS', '--', '--runner=DataflowRunner']
  cases[(module, 'beam_stray')] = ['ARGS', 'stray']
  cases[(module, 'missing_required')] = ['--output_dir=OUT']
  procs = {}
  for (module, case), argv in cases.items():
    tmp = tmp_path_factory.mktemp(f'{module.split(".")[-1]}_{case}')
    (tmp / 'in').mkdir()
    full = []
    for a in argv:
      full += _args(module, tmp) if a == 'ARGS' else [
          a.replace('OUT', str(tmp / 'out'))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    procs[(module, case)] = (subprocess.Popen(
        [sys.executable, '-m', module] + full, cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), tmp)
  results = {}
  for key, (proc, tmp) in procs.items():
    out, err = proc.communicate(timeout=300)
    results[key] = (subprocess.CompletedProcess(proc.args, proc.returncode,
                                                out, err), tmp)
  return results


@pytest.mark.parametrize('module', list(TOOLS))
def test_help_lists_the_tools_own_flags_and_runs_nothing(runs, module):
  own = _own_flags(TOOLS[module][0])
  assert own  # Every tool has flags.
  for case in ('help', 'help_with_flags'):
    if (module, case) not in runs:
      continue
    proc, tmp = runs[(module, case)]
    assert proc.returncode == 0, (case, proc.stderr[-2000:])
    assert proc.stdout.startswith(f'usage: python -m {module} ')
    for name in own:
      assert f'--{name}:' in proc.stdout or f'--[no]{name}:' in proc.stdout, (
          case, name)
    assert 'logging flags' not in proc.stdout.replace(
        '--helpfull also lists the logging flags', '')
    # Nothing ran: no output, no log line, no Beam or TF warning.
    assert not (tmp / 'out').exists(), case
    assert proc.stderr == '', (case, proc.stderr[-2000:])


def test_helpfull_adds_the_logging_flags(runs):
  full, _ = runs[(LIGHT_BEAM_TOOL, 'helpfull')]
  assert full.returncode == 0
  assert '--verbosity' in full.stdout and '--logger_levels' in full.stdout
  assert '--num_shards:' in full.stdout


@pytest.mark.parametrize('module', list(TOOLS))
def test_an_unknown_flag_is_one_line_naming_it(runs, module):
  name = _name(module)
  proc, tmp = runs[(module, 'misspelt')]
  _, named, meant = MISSPELT[module]
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      f'{name}: error: Unknown command line flag {named}. Did you mean: '
      f'{meant} ?'], proc.stderr
  assert not (tmp / 'out').exists()


def test_an_unknown_flag_without_a_near_name(runs):
  proc, tmp = runs[(LIGHT_BEAM_TOOL, 'unknown')]
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      "write_clips: error: Unknown command line flag 'bogus_flag'"]
  assert not (tmp / 'out').exists()


def test_beam_options_go_after_the_separator_and_are_checked(runs):
  module = LIGHT_BEAM_TOOL
  name = module.split('.')[-1]
  expected = {
      'beam_unknown': f'{name}: error: unknown Beam pipeline option '
                      '--projetc after `--`. Did you mean: --project ?',
      'beam_own_flag': f'{name}: error: --runner is a flag of this tool: give '
                       'it before `--`',
      'beam_stray': f"{name}: error: unexpected argument 'stray' (Beam "
                    'options go after `--`)',
  }
  for case, line in expected.items():
    proc, tmp = runs[(module, case)]
    assert proc.returncode == 2, (case, proc.stderr[-2000:])
    assert proc.stderr.splitlines() == [line], (case, proc.stderr)
    assert not (tmp / 'out').exists(), case


def test_a_missing_required_flag_is_named(runs):
  proc, tmp = runs[('tfrecords_tools.write_clips', 'missing_required')]
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      'write_clips: error: --manifest is required (--help lists the flags)']
  assert not (tmp / 'out').exists()


# ---- In process: parsing ----


def _beam_tool(define=None):
  def define_flags(fv):
    flags.DEFINE_string('output_dir', None, 'Out.', flag_values=fv)
    cli.define_beam_flags(fv, workers_help='W.', default_mode='x')
  return cli.Tool(name='t', command='python -m t', doc='A tool.',
                  define_flags=define or define_flags,
                  required=('output_dir',), beam=True)


def test_beam_options_after_the_separator_and_in_flagfiles(tmp_path):
  tool = _beam_tool()
  args = cli.parse(tool, ['t', '--output_dir=o',
                          '--direct_running_mode=multi_processing', '--',
                          '--project=P', '--region', 'R'])
  assert args.flags.output_dir == 'o'
  assert args.beam_args == ['--project=P', '--region', 'R']
  assert args.beam_pipeline_args() == [
      '--direct_running_mode=multi_processing', '--project=P', '--region', 'R']
  # A flagfile's `--` line starts its Beam options; flags after the file
  # still override it, options after `--` add to its.
  flagfile = tmp_path / 'config.flags'
  flagfile.write_text('# comment\n--output_dir=a\n--runner=DirectRunner\n'
                      '--\n--project=P\n')
  args = cli.parse(tool, ['t', f'--flagfile={flagfile}', '--output_dir=b',
                          '--', '--region=R'])
  assert args.flags.output_dir == 'b'
  assert args.beam_args == ['--project=P', '--region=R']
  with pytest.raises(cli.UsageError, match='unknown Beam pipeline option '
                     '--num_worker after'):
    cli.parse(tool, ['t', '--output_dir=o', '--', '--num_worker=2'])
  with pytest.raises(cli.UsageError, match='invalid int value'):
    cli.parse(tool, ['t', '--output_dir=o', '--', '--num_workers=many'])


def test_each_parse_has_fresh_flags():
  """A process may run tools several times (tests): no flag is left over."""
  tool = _beam_tool()
  first = cli.parse(tool, ['t', '--output_dir=o', '--direct_num_workers=3'])
  second = cli.parse(tool, ['t', '--output_dir=p'])
  assert first.flags.direct_num_workers == 3
  assert second.flags.direct_num_workers == 1
  assert first.flags['output_dir'] is not second.flags['output_dir']
  assert ('output_dir' not in flags.FLAGS or
          flags.FLAGS['output_dir'] is not second.flags['output_dir'])


def test_written_run_config_reruns_the_same_command(tmp_path):
  """`beam_utils.write_run_config` writes what `cli.parse` reads back."""
  from tfrecords_tools import beam_utils  # pylint: disable=g-import-not-at-top
  tool = _beam_tool()
  args = cli.parse(tool, ['t', f'--output_dir={tmp_path}', '--',
                          '--project=P'])
  path = beam_utils.write_run_config(
      str(tmp_path), 't', args.flags,
      ['output_dir', 'runner', 'direct_num_workers', 'direct_running_mode'],
      args.beam_args)
  assert open(path).read().splitlines()[1:] == [
      f'--output_dir={tmp_path}', '--runner=DirectRunner',
      '--direct_num_workers=1', '--', '--project=P']
  again = cli.parse(tool, ['t', f'--flagfile={path}'])
  assert again.flags.output_dir == str(tmp_path)
  assert again.beam_args == ['--project=P']
