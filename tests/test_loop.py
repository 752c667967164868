"""The one training loop (spl/loop.py) with a counting task: loop sizes,
checkpoints, resume, forced saves, progress, summaries and metrics.json.

The task's "step" adds 1 to a variable, so every expectation is a count
written from the Controller's docstring: loops of `steps_per_loop` that stop
short at checkpoint steps (and at epoch ends when the task asks), a checkpoint
at each period and at the last step, resume from the latest checkpoint.
"""

import json
import os

import pytest
import tensorflow as tf

from spl import loop


class CountingTask(loop.Task):
  """Each step adds 1 to `step_counter`; the loss is 1 / step."""

  def __init__(self, *, loops_end_at_epochs=False, force_save_at=(),
               loss=None):
    self.step_counter = tf.Variable(0, dtype=tf.int64)
    self.checkpoint = tf.train.Checkpoint(step=self.step_counter)
    self.global_batch_size = 4
    self.loops_end_at_epochs = loops_end_at_epochs
    self.force_save_at = set(force_save_at)
    self.loss = loss
    self.loops = []        # (first step, number of steps) of every loop
    self.ends = []         # (step, checkpoint_due) of every end_loop call
    self.iterator_steps = []
    self.without_steps = []

  def train_iterator(self, step):
    self.iterator_steps.append(step)
    return iter(())

  def train_steps(self, iterator, num_steps):
    first = int(self.step_counter.numpy())
    self.loops.append((first, num_steps))
    self.step_counter.assign_add(num_steps)
    step = int(self.step_counter.numpy())
    return {'loss': self.loss if self.loss is not None else 1.0 / step,
            'accuracy': 0.5}

  def end_loop(self, step, checkpoint_due):
    self.ends.append((step, checkpoint_due))
    return step in self.force_save_at

  def end_without_steps(self, step):
    self.without_steps.append(step)

  def summary(self):
    return {'eval': {'top1': 0.25}}

  def evaluate(self, step):
    return {'top1': 0.5, 'step_seen': step, 'per_class': [0.5, 0.5]}

  def predict(self):
    return {'written': ['a', 'b']}


def _checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return []
  return sorted(int(p.rsplit('-', 1)[-1])
                for p in state.all_model_checkpoint_paths)


def _controller(task, model_dir, total_steps, steps_per_epoch=100, **config):
  config = dict(dict(steps_per_loop=4, checkpoint_every_steps=5,
                     max_checkpoints_to_keep=10), **config)
  return loop.Controller(
      strategy=tf.distribute.get_strategy(), task=task,
      model_dir=str(model_dir), config=loop.LoopConfig(**config),
      total_steps=total_steps, steps_per_epoch=steps_per_epoch)


def test_loops_stop_at_checkpoints_and_the_last_step(tmp_path):
  """11 steps, 4 a loop, a checkpoint every 5 (none divides another)."""
  task = CountingTask()
  setup = []
  summary = _controller(task, tmp_path, 11).train(
      setup_done=lambda: setup.append(list(task.loops)))
  assert setup == [[]]  # before the first step
  assert task.iterator_steps == [0]
  assert task.loops == [(0, 4), (4, 1), (5, 4), (9, 1), (10, 1)]
  assert task.ends == [(4, False), (5, True), (9, False), (10, True),
                       (11, True)]
  assert _checkpoint_steps(tmp_path) == [5, 10, 11]
  assert task.without_steps == []
  train = summary['train']
  assert train['step'] == 11 and train['loss'] == pytest.approx(1 / 11)
  assert train['epoch'] == pytest.approx(0.11)
  assert train['accuracy'] == 0.5 and train['clips_per_second'] > 0
  assert summary['step'] == 11 and summary['eval'] == {'top1': 0.25}
  with open(tmp_path / loop.METRICS_FILENAME) as f:
    assert json.load(f) == json.loads(json.dumps(summary))


def test_resume_continues_from_the_latest_checkpoint(tmp_path):
  """A run stopped at step 7 resumes from checkpoint 5 and ends at 11."""
  first = CountingTask()
  _controller(first, tmp_path, 7).train()
  assert _checkpoint_steps(tmp_path) == [5, 7]
  resumed = CountingTask()
  assert loop.resume(resumed.checkpoint, str(tmp_path), 'the count',
                     training=True).endswith('-7')
  assert int(resumed.step_counter.numpy()) == 7
  summary = _controller(resumed, tmp_path, 11).train()
  assert resumed.iterator_steps == [7]
  assert resumed.loops == [(7, 3), (10, 1)]
  assert summary['step'] == 11
  assert _checkpoint_steps(tmp_path) == [5, 7, 10, 11]
  # Rerun when finished: no step, the task is told, nothing new is saved.
  done = CountingTask()
  loop.resume(done.checkpoint, str(tmp_path), 'the count', training=True)
  summary = _controller(done, tmp_path, 11).train()
  assert done.loops == [] and done.without_steps == [11]
  assert summary['step'] == 11
  # metrics.json keeps the result of the run that trained (step 11).
  assert summary['train']['step'] == 11
  assert summary['train']['loss'] == pytest.approx(1 / 11)
  assert _checkpoint_steps(tmp_path) == [5, 7, 10, 11]


def test_epoch_ends_and_forced_saves(tmp_path):
  """Loops also stop at epoch ends when the task asks; end_loop forces saves.

  Epochs of 3 steps, loops of 4, checkpoints every 5, 8 steps.
  """
  task = CountingTask(loops_end_at_epochs=True, force_save_at={3})
  _controller(task, tmp_path, 8, steps_per_epoch=3).train()
  assert task.loops == [(0, 3), (3, 2), (5, 1), (6, 2)]
  assert _checkpoint_steps(tmp_path) == [3, 5, 8]
  plain = CountingTask()
  _controller(plain, tmp_path / 'plain', 8, steps_per_epoch=3).train()
  assert plain.loops == [(0, 4), (4, 1), (5, 3)]


def test_retention_keeps_the_newest_checkpoints(tmp_path):
  _controller(CountingTask(), tmp_path, 12, steps_per_loop=1,
              checkpoint_every_steps=2, max_checkpoints_to_keep=2).train()
  assert _checkpoint_steps(tmp_path) == [10, 12]


@pytest.mark.parametrize('loss', [float('nan'), float('inf')])
def test_a_non_finite_loss_stops_the_run(tmp_path, loss):
  with pytest.raises(FloatingPointError, match='training loss is .* at step 4'):
    _controller(CountingTask(loss=loss), tmp_path, 11).train()
  assert _checkpoint_steps(tmp_path) == []


def test_summaries_and_progress_lines(tmp_path, caplog):
  """Every scalar of a loop goes to TensorBoard at its step (but the step)."""
  caplog.set_level('INFO')
  _controller(CountingTask(), tmp_path, 5).train()
  events = [e for f in tf.io.gfile.glob(str(tmp_path / 'train' / '*'))
            for e in tf.compat.v1.train.summary_iterator(f)]
  tags = {}
  for event in events:
    for value in event.summary.value:
      tags.setdefault(value.tag, []).append(event.step)
  assert sorted(tags) == ['accuracy', 'clips_per_second', 'epoch', 'loss']
  assert all(steps == [4, 5] for steps in tags.values())
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith('step ')]
  assert len(lines) == 2
  assert lines[0].startswith('step 4/5  epoch 0.04  loss 0.2500  accuracy 0.5')
  assert 'clips/s' in lines[0] and 'eta' in lines[0]


@pytest.mark.parametrize('field', ['steps_per_loop', 'checkpoint_every_steps',
                                   'max_checkpoints_to_keep'])
def test_loop_config_is_checked(tmp_path, field):
  with pytest.raises(ValueError, match=f'`{field}` must be > 0, got 0'):
    _controller(CountingTask(), tmp_path, 5, **{field: 0})
  assert not os.path.exists(tmp_path / loop.METRICS_FILENAME)


def test_evaluate_and_predict_run_through_the_controller(tmp_path):
  """Mode 'eval' writes the evaluation's scalars and the checkpoint to
  metrics.json; mode 'predict' returns the task's result and leaves
  metrics.json (a training run's) alone. Both call setup_done first."""
  calls = []
  summary = _controller(CountingTask(), tmp_path, 0).evaluate(
      7, 'ckpt-7', setup_done=lambda: calls.append('setup'))
  assert calls == ['setup']
  assert summary == {'eval': {'top1': 0.5, 'step_seen': 7},
                     'checkpoint': 'ckpt-7'}
  with open(tmp_path / loop.METRICS_FILENAME) as f:
    assert json.load(f) == summary
  os.remove(tmp_path / loop.METRICS_FILENAME)
  result = _controller(CountingTask(), tmp_path, 0).predict(
      'ckpt-7', setup_done=lambda: calls.append('setup'))
  assert calls == ['setup', 'setup']
  assert result == {'written': ['a', 'b'], 'checkpoint': 'ckpt-7'}
  assert not os.path.exists(tmp_path / loop.METRICS_FILENAME)


  class TrainOnly(loop.Task):

    def train_iterator(self, step):
      return iter(())

    def train_steps(self, iterator, num_steps):
      return {'loss': 0.0}

  with pytest.raises(NotImplementedError, match='TrainOnly does not predict'):
    TrainOnly().predict()
  with pytest.raises(TypeError, match='abstract'):
    loop.Task()  # pylint: disable=abstract-class-instantiated


def test_record_evaluation(tmp_path, caplog):
  """Scalars to TensorBoard at the step, the whole result (with the step)
  to the JSON file, one log line."""
  caplog.set_level('INFO')
  writer = tf.summary.create_file_writer(str(tmp_path / 'eval'))
  result = {'top1': 0.5, 'num_clips': 9, 'per_class': [1.0, 0.0]}
  loop.record_evaluation(str(tmp_path), 'details.json', 12, result, writer,
                         'eval')
  with open(tmp_path / 'details.json') as f:
    assert json.load(f) == dict(result, step=12)
  values = {v.tag: (e.step, tf.make_ndarray(v.tensor).item())
            for f in tf.io.gfile.glob(str(tmp_path / 'eval' / '*'))
            for e in tf.compat.v1.train.summary_iterator(f)
            for v in e.summary.value}
  assert values == {'top1': (12, 0.5), 'num_clips': (12, 9.0)}
  assert 'eval at step 12: num_clips=9.0000 top1=0.5000' in caplog.text
