"""CPD pre-training on two worker processes (MultiWorkerMirroredStrategy).

Each test starts two workers on localhost (TF_CONFIG, free ports), one CPU
device each, running the job users run (`spl.main.run` with
`runs/cpd_pretrain_w2v.gin` + `tiny.gin`, as `--strategy=multi_worker_mirrored`
does) for 4 deterministic steps (`loop.deterministic`: input order and
augmentation fixed by `loop.seed`; negatives are stateless draws from the
sampler's seed and step) with a replicated or a sharded memory bank, and once
stopped at its step-2 checkpoint and rerun. Every worker saves its own copy
of every variable (weights, batch-norm statistics, its bank copy or shard, Z,
the sampler's step) and the full banks to an npz file.

The workers must hold bit-identical copies and equal a reference process with
the same global batch: MirroredStrategy over 2 logical CPUs whose replicas
each read their own input pipeline (`InputReplicationMode.PER_REPLICA`:
pipeline i reads the files and seeds of worker i). It equals the workers by
construction: the same replicas (batch-norm statistics are per replica, the
sharded bank has one shard per replica and draws its negatives per shard),
the same per-replica batches, the same step code; only the collectives differ
(in process vs gRPC). One device at the global batch would not be equal
(batch norm over 4 clips is not batch norm over 2 + 2; a one-shard bank draws
other negatives), nor would MirroredStrategy's default input (one pipeline for
both replicas reads the records in another order). The reference runs in a
fresh process like the workers: a second run in one process does not start
from the first one's initial weights (the heads' Dense kernels).

The chief's last checkpoint must hold the full banks (every worker's shard)
and equal the reference's checkpoint tensor for tensor. The sharded run
validates at every epoch's end (`train_and_eval`: retrieval on EVAL_FILES,
what the curriculum's saturation rule reads): every worker must score what
the reference scores.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cpd import memory_bank
from tests import distribute_utils
from tests import test_cpd_trainer
from tests import test_main

NUM_STEPS = 4  # 2 epochs of 8 clips at global batch 4 (tiny.gin).
# Workers vs the reference: float32 rounding, should a reduction sum in
# another order (with 2 replicas none does: every value measured so far is
# bit-identical).
ATOL = 1e-6
RTOL = 1e-5
REFERENCE = 'reference'
WORKER = 'multi_worker_mirrored'

# Runs one process: argv[1] is a JSON dict (strategy, model_dir, output,
# gin_files, bindings, mode); writes the run's state and its last validation.
_DRIVER = """
import json
import sys
args = json.loads(sys.argv[1])
import tensorflow as tf
if args['strategy'] == 'reference':
  cpus = tf.config.list_physical_devices('CPU')
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from absl import logging
import numpy as np
from spl import main
from tests import test_cpd_multiworker
logging.set_verbosity(logging.INFO)
strategy = (test_cpd_multiworker.reference_strategy(['/cpu:0', '/cpu:1'])
            if args['strategy'] == 'reference' else
            main.build_strategy(args['strategy']))
result = main.run(args['gin_files'], args['bindings'],
                  model_dir=args['model_dir'], mode=args['mode'],
                  strategy=strategy)
np.savez(args['output'],
         **test_cpd_multiworker.local_state(result['model'], strategy))
with open(args['output'] + '.eval.json', 'w') as f:
  json.dump(result.get('eval', {}), f)
"""

data = test_cpd_trainer.data  # The fake clips with titles and word vectors.


def _bindings(data, bank_mode, *extra):
  """`test_cpd_trainer._run`'s data bindings, then this test's."""
  return [f"TRAIN_FILES='{data['train']}'", f"EVAL_FILES='{data['val']}'",
          f'NUM_TRAIN_EXAMPLES={test_cpd_trainer.NUM_CLIPS}',
          f"WORD2VEC_PATH='{data['w2v']}'", f"BANK_MODE='{bank_mode}'",
          'loop.deterministic=True', f'cpd_run.train_steps={NUM_STEPS}',
          'loop.steps_per_loop=2', 'loop.checkpoint_every_steps=2', *extra]


def reference_strategy(devices):
  """MirroredStrategy over `devices`, one input pipeline per replica."""
  strategy = distribute_utils.mirrored_strategy(devices)
  distribute = strategy.distribute_datasets_from_function
  per_replica = tf.distribute.InputOptions(
      experimental_replication_mode=(
          tf.distribute.InputReplicationMode.PER_REPLICA))

  def distribute_per_replica(dataset_fn, options=None):
    return distribute(dataset_fn, options or per_replica)

  strategy.distribute_datasets_from_function = distribute_per_replica
  return strategy


def local_state(models, strategy):
  """This process's copy of the run state, and the full banks.

  Args:
    models: the finished run's `cpd.trainer.CpdModels`.
    strategy: the run's strategy.

  Returns:
    Dict of numpy values. '<name>@<global replica id>', one per local
    replica: every weight (batch-norm statistics included), the bank's copy
    (replicated) or the replica's shard without its scratch row (sharded), Z
    of both directions and whether it was estimated, the sampler's step.
    'full:<bank>': `read_all()` of each bank (a collective under
    MultiWorkerMirroredStrategy: every worker calls it).
  """
  loss = models.loss_module
  variables = {}
  for prefix, model in (('video', models.video_model),
                        ('text_encoder', models.text_encoder),
                        ('text_head', models.text_head)):
    for i, v in enumerate(model.weights):
      variables[f'{prefix}/{i}/{v.name}'] = v
  for name in ('z_v2t', 'z_t2v'):
    z = getattr(loss, name)
    variables[name] = z.value
    variables[f'{name}/estimated'] = z.estimated
  variables['sampler_step'] = loss.sampler.step
  ids = memory_bank._local_replica_ids(  # pylint: disable=protected-access
      strategy, len(strategy.experimental_local_results(loss.sampler.step)))
  state = {}
  for name, v in variables.items():
    for r, value in zip(ids, strategy.experimental_local_results(v)):
      state[f'{name}@{r}'] = value.numpy()
  for name in ('video_bank', 'text_bank'):
    bank = getattr(loss, name)
    for r, value in zip(ids, bank.read_replicas()):
      rows = value.numpy()
      if bank.mode == memory_bank.SHARDED:
        rows = rows[:bank.shard_range(r)[1]]
      state[f'{name}@{r}'] = rows
    state[f'full:{name}'] = bank.read_all().numpy()
  return state


def _start(strategy, model_dir, output, bindings, tf_config=None,
           mode='train'):
  args = json.dumps({'strategy': strategy, 'model_dir': model_dir,
                     'output': output, 'bindings': bindings, 'mode': mode,
                     'gin_files': [os.path.join(test_cpd_trainer.RUNS,
                                                'cpd_pretrain_w2v.gin'),
                                   test_cpd_trainer.TINY]})
  env = (test_main._env(TF_CONFIG=json.dumps(tf_config)) if tf_config
         else test_main._env())
  return subprocess.Popen([sys.executable, '-c', _DRIVER, args],
                          cwd=test_main.ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


def _start_workers(model_dir, outputs, bindings, mode='train'):
  cluster = {'worker': [f'localhost:{p}' for p in test_main._free_ports(2)]}
  return [_start(WORKER, model_dir, output, bindings,
                 {'cluster': cluster, 'task': {'type': 'worker', 'index': i}},
                 mode)
          for i, output in enumerate(outputs)]


def _wait(procs, names):
  """Waits for every process to end; returns their logs."""
  try:
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for name, p, log in zip(names, procs, logs):
    assert p.returncode == 0, f'{name}:\n{log[-4000:]}'
  return logs


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _checkpoint(model_dir):
  """Every tensor of the latest checkpoint of `model_dir`, by name."""
  path = tf.train.latest_checkpoint(model_dir)
  reader = tf.train.load_checkpoint(path)
  return path, {name: reader.get_tensor(name)
                for name in reader.get_variable_to_shape_map()
                if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def _max_difference(a, b):
  """Max |a - b|; 0 for equal arrays (an infinite or string entry too)."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return float('inf')
  if np.array_equal(a, b, equal_nan=a.dtype.kind == 'f'):
    return 0.0
  if a.dtype.kind != 'f':
    return float('inf')
  return float(np.max(np.abs(a.astype(np.float64) - b)))


@pytest.mark.slow
@pytest.mark.parametrize('bank_mode,resumed,validated', [
    (memory_bank.REPLICATED, False, False),
    # With validation (retrieval on EVAL_FILES) every epoch, as the
    # curriculum's saturation rule needs: every worker must see the same R@K.
    (memory_bank.SHARDED, False, True),
    # Stopped after its checkpoint at step 2 and rerun: each worker restores
    # its own shard of the full bank the chief saved.
    (memory_bank.SHARDED, True, False),
])
def test_two_workers_end_like_one_process(data, tmp_path, bank_mode,
                                          resumed, validated):
  start = time.monotonic()
  mode = 'train_and_eval' if validated else 'train'
  model_dir = str(tmp_path / 'workers')
  reference_dir = str(tmp_path / 'reference')
  outputs = [str(tmp_path / f'worker_{i}.npz') for i in range(2)]
  reference_output = str(tmp_path / 'reference.npz')
  bindings = _bindings(data, bank_mode, *(
      ['cpd_run.validate_every_epochs=1'] if validated else []))
  # The reference runs meanwhile: the processes share nothing.
  reference_proc = _start(REFERENCE, reference_dir, reference_output,
                          bindings, mode=mode)
  try:
    if resumed:
      _wait(_start_workers(model_dir, [str(tmp_path / f'first_{i}.npz')
                                       for i in range(2)],
                           bindings + ['cpd_run.train_steps=2']),
            ['worker 0, first run', 'worker 1, first run'])
    logs = _wait(
        _start_workers(model_dir, outputs, bindings, mode) + [reference_proc],
        ['worker 0', 'worker 1', 'reference'])
  finally:
    if reference_proc.poll() is None:
      reference_proc.kill()
      reference_proc.wait()
  for i, log in enumerate(logs):  # Workers 0 and 1, then the reference.
    first = 2 if resumed and i < 2 else 0
    assert f'CPD training from step {first} to {NUM_STEPS}' in log, (
        log[-4000:])
  workers = [_load(output) for output in outputs]
  reference = _load(reference_output)

  # Worker w holds replica w (reference: both), and the full banks.
  replicas = {k for k in reference if '@' in k}
  names = sorted({k.rsplit('@', 1)[0] for k in replicas})
  assert len(names) > 10
  for w, worker in enumerate(workers):
    assert sorted(worker) == sorted(
        [f'{n}@{w}' for n in names] +
        [k for k in reference if k.startswith('full:')])
  assert workers[0]['sampler_step@0'] == NUM_STEPS
  assert workers[0]['z_v2t/estimated@0'] and workers[0]['z_v2t@0'] > 0

  # The workers hold bit-identical copies (of a sharded bank: its shards,
  # and the full bank either gathers).
  sharded = bank_mode == memory_bank.SHARDED
  for name in names:
    if not (sharded and name.endswith('_bank')):
      np.testing.assert_array_equal(workers[0][f'{name}@0'],
                                    workers[1][f'{name}@1'], err_msg=name)
  for key in ('full:video_bank', 'full:text_bank'):
    np.testing.assert_array_equal(workers[0][key], workers[1][key],
                                  err_msg=key)
  if sharded:
    for name in ('video_bank', 'text_bank'):
      np.testing.assert_array_equal(
          workers[0][f'full:{name}'],
          np.concatenate([workers[0][f'{name}@0'], workers[1][f'{name}@1']]),
          err_msg=name)

  # Each worker's copy equals the reference replica's of the same id, the
  # full banks the reference's, the chief's last checkpoint the reference's
  # tensor for tensor.
  path, chief = _checkpoint(model_dir)
  reference_path, reference_checkpoint = _checkpoint(reference_dir)
  assert os.path.basename(path) == os.path.basename(reference_path) == (
      f'ckpt-{NUM_STEPS}')
  assert sorted(chief) == sorted(reference_checkpoint)
  got = {**workers[1], **workers[0]}
  got.update({f'checkpoint:{k}': v for k, v in chief.items()})
  want = dict(reference)
  want.update({f'checkpoint:{k}': v for k, v in reference_checkpoint.items()})
  assert sorted(got) == sorted(want)
  differences = {k: _max_difference(got[k], want[k]) for k in want}
  beyond = {k: d for k, d in differences.items() if d > 0 and (
      d == float('inf') or
      not np.allclose(got[k], want[k], rtol=RTOL, atol=ATOL))}
  worst = max(differences, key=differences.get)
  summary = (f'{bank_mode}{", resumed" if resumed else ""}: '
             f'{len(differences)} values compared, max |workers - reference| '
             f'{differences[worst]:.3g} ({worst}), '
             f'{sum(d > 0 for d in differences.values())} not bit-identical')
  assert not beyond, summary + '; beyond tolerance:\n' + '\n'.join(
      f'  {k}: {d:.3g}' for k, d in sorted(beyond.items()))

  # The chief saved the full banks (a sharded one gathered from both
  # workers), not its own copy or shard only.
  for name in ('video_bank', 'text_bank'):
    key = next(k for k in chief if f'/{name}/' in k)
    np.testing.assert_array_equal(chief[key], workers[0][f'full:{name}'],
                                  err_msg=key)
  if validated:
    # Validated at both epochs' ends; every worker got the reference's R@K.
    for log in (logs[0], logs[2]):
      for step in (2, 4):
        assert f'validation retrieval at step {step}:' in log, log[-4000:]
    evals = [json.load(open(o + '.eval.json'))  # pylint: disable=consider-using-with
             for o in outputs + [reference_output]]
    assert evals[0]['num_pairs'] == 6 and 'mean_R@10' in evals[0], evals[0]
    assert evals[0] == evals[1] == evals[2], evals
  # Only the chief's directory is left.
  assert not [n for n in os.listdir(model_dir) if n.startswith('.worker')]
  print(f'{summary}; {time.monotonic() - start:.0f} s')
