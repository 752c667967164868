"""spl.job: how every gin-driven entry point parses its config and records it."""

import os

import gin
import pytest

from spl import job


@gin.configurable('job_test_fn')
def _fn(a=1, b=2):
  return a, b


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_defaults_then_files_then_bindings(tmp_path):
  path = tmp_path / 'x.gin'
  path.write_text('job_test_fn.a = 10\n')
  job.parse_gin([str(path)], ['job_test_fn.b = 30'],
                defaults=['job_test_fn.a = 5', 'job_test_fn.b = 6'])
  assert _fn() == (10, 30)


def test_repository_relative_files_work_from_any_directory(tmp_path,
                                                           monkeypatch):
  # A run file whose `include`s name repository paths, and an overlay with a
  # gin `import`: from another directory gin's own resolution failed with a
  # bare TypeError. A file relative to the working directory still wins.
  import spl.configurables  # pylint: disable=g-import-not-at-top,unused-import
  monkeypatch.chdir(tmp_path)
  assert not os.path.exists('gin_configs')
  (tmp_path / 'mine.gin').write_text('build_classifier.dropout_rate = 0.25\n')
  job.parse_gin(['gin_configs/runs/train_teacher.gin', 'mine.gin'], [],
                finalize=False)
  # From the included models/r3d50_g.gin, and from the local file.
  assert gin.query_parameter('build_classifier.backbone') == 'r3d50_g'
  assert gin.query_parameter('build_classifier.dropout_rate') == 0.25
  assert os.getcwd() == str(tmp_path)
  job.parse_gin(['gin_configs/tiny.gin'], [], finalize=False)
  assert gin.query_parameter('build_classifier.backbone') == 'tiny3d'


def test_problems_are_named(tmp_path):
  with pytest.raises(ValueError, match="--gin_file '.*nope.gin' does not "
                     'exist'):
    job.parse_gin([str(tmp_path / 'nope.gin')], [])
  path = tmp_path / 'x.gin'
  path.write_text('job_test_fn.a = 1\n')
  with pytest.raises(ValueError, match=r"bad gin config \(files \['.*x.gin'\]"
                     r", bindings \['job_test_fn.c = 3'\]\)"):
    job.parse_gin([str(path)], ['job_test_fn.c = 3'])


def test_finalize_refuses_unsatisfied_required_macros(tmp_path):
  path = tmp_path / 'x.gin'
  path.write_text('job_test_fn.a = %DATA\nDATA = %gin.REQUIRED\n')
  with pytest.raises(ValueError, match='DATA'):
    job.parse_gin([str(path)], [], finalize=True)
  job.parse_gin([str(path)], [], finalize=False, clear=True)
  # `clear` starts from nothing: the earlier parse left no binding behind.
  job.parse_gin([], [], clear=True)
  assert _fn() == (1, 2)


def test_operative_config_lists_what_ran(tmp_path):
  job.parse_gin([], ['job_test_fn.a = 7', 'job_test_fn.b = 8'])
  before = job.write_operative_config(str(tmp_path / 'out'), 'op.gin')
  with open(before) as f:
    assert 'job_test_fn' not in f.read()  # Nothing has run yet.
  assert _fn() == (7, 8)
  path = job.write_operative_config(str(tmp_path / 'out'), 'op.gin')
  with open(path) as f:
    text = f.read()
  assert 'job_test_fn.a = 7' in text and 'job_test_fn.b = 8' in text
  parsed = job.write_operative_config(str(tmp_path / 'out'), 'all.gin',
                                      operative=False)
  with open(parsed) as f:
    assert 'job_test_fn.a = 7' in f.read()
  assert sorted(os.listdir(tmp_path / 'out')) == ['all.gin', 'op.gin']
