"""The low-label protocol: fine-tune on 1%, 10% or 20% of the labels per class.

Sampling is per class (every class keeps max(1, round(fraction * n_c))
examples, so rare classes are not lost) and seeded. It depends only on the
seed and on the (key, label) pairs, not on the order records were read in:
within a class, examples are sorted by key before a per-class permutation is
drawn from `numpy.random.default_rng([seed, class])`, and the first ones are
kept. Subsets are therefore nested: the 1% subset is inside the 10% one,
which is inside the 20% one (for the same seed), so the curves compare like
with like.

`write_subset_records` copies the selected records, bytes unchanged, into new
shards that `spl.main` fine-tunes on (`TRAIN_FILES`), with the label map
copied along.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecords_tools import atomic_files
from tfrecords_tools import file_patterns
from tfrecords_tools import records as records_lib
from tfrecords_tools import schema

SUBSET_FILENAME = 'low_label_subset.json'


def per_class_subset_mask(labels, fraction: float, *, seed: int = 0,
                          keys: Optional[Sequence] = None,
                          min_per_class: int = 1) -> np.ndarray:
  """Boolean mask selecting `fraction` of the examples of every class.

  Args:
    labels: int [N].
    fraction: in (0, 1].
    seed: sampling seed.
    keys: optional [N] unique sortable ids (e.g. clip keys): makes the
      selection independent of the order of `labels`. Default: positions.
    min_per_class: every class present keeps at least this many (capped by
      its size).

  Returns:
    bool [N].
  """
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if not 0 < fraction <= 1:
    raise ValueError(f'`fraction` must be in (0, 1], got {fraction}')
  if min_per_class < 0:
    raise ValueError(f'`min_per_class` must be >= 0, got {min_per_class}')
  if keys is None:
    keys = np.arange(len(labels))
  keys = np.asarray(keys)
  if len(keys) != len(labels):
    raise ValueError(f'`keys` has {len(keys)} entries, `labels` {len(labels)}')
  if len(np.unique(keys)) != len(keys):
    raise ValueError('`keys` must be unique')
  if len(labels) and labels.min() < 0:
    raise ValueError(f'`labels` must be >= 0, got {labels.min()}')
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    members = members[np.argsort(keys[members], kind='stable')]
    n_keep = min(len(members),
                 max(min_per_class, int(round(fraction * len(members)))))
    order = np.random.default_rng([int(seed), int(c)]).permutation(
        len(members))
    mask[members[order[:n_keep]]] = True
  return mask


def _read_keys_and_labels(files: Sequence[str], label_key: str):
  context = {schema.CLIP_KEY_KEY: tf.io.FixedLenFeature([], tf.string),
             label_key: tf.io.FixedLenFeature([], tf.int64)}
  keys, labels, where = [], [], []
  for f, path in enumerate(files):
    ds = tf.data.TFRecordDataset(path).map(
        lambda s: tf.io.parse_single_sequence_example(s, context)[0])
    for r, ctx in enumerate(ds.batch(4096)):
      for j, (k, l) in enumerate(zip(ctx[schema.CLIP_KEY_KEY].numpy(),
                                     ctx[label_key].numpy())):
        keys.append(k.decode('utf-8'))
        labels.append(int(l))
        where.append((f, r * 4096 + j))
  return keys, np.asarray(labels, np.int64), where


def select_clip_keys(file_pattern: str, fraction: float, *, seed: int = 0,
                     label_key: str = schema.LABEL_INDEX_KEY) -> List[str]:
  """The sorted clip keys of the per-class subset of some clip records.

  Args:
    file_pattern: glob of clip-record shards.
    fraction: in (0, 1].
    seed: sampling seed.
    label_key: the context key the class is read from.

  Returns:
    Sorted list of `clip/key` strings.
  """
  files = file_patterns.match(file_pattern)
  keys, labels, _ = _read_keys_and_labels(files, label_key)
  mask = per_class_subset_mask(labels, fraction, seed=seed, keys=keys)
  return sorted(k for k, m in zip(keys, mask) if m)


def write_subset_records(file_pattern: str, output_dir: str, fraction: float,
                         *, seed: int = 0, num_shards: int = 1,
                         label_key: str = schema.LABEL_INDEX_KEY
                         ) -> Dict[str, object]:
  """Writes the selected records to `output_dir` for `spl.main` to train on.

  Shards are written under temporary names and renamed; the label map next to
  the input shards is copied; `low_label_subset.json` records fraction,
  seed, per-class counts and the selected keys.

  Args:
    file_pattern: glob of the full labelled training shards.
    output_dir: new directory of shards `clips-?????-of-?????.tfrecord`.
    fraction: in (0, 1].
    seed: sampling seed.
    num_shards: output shards, > 0 (records dealt round-robin in key order).
    label_key: the context key the class is read from.

  Returns:
    The content of `low_label_subset.json` plus 'files'.
  """
  if num_shards <= 0:
    raise ValueError(f'`num_shards` must be > 0, got {num_shards}')
  files = file_patterns.match(file_pattern)
  keys, labels, where = _read_keys_and_labels(files, label_key)
  mask = per_class_subset_mask(labels, fraction, seed=seed, keys=keys)
  selected = sorted((keys[i], where[i]) for i in np.flatnonzero(mask))
  wanted = {w: n for n, (_, w) in enumerate(selected)}
  tf.io.gfile.makedirs(output_dir)
  paths = [os.path.join(output_dir, schema.shard_name(i, num_shards))
           for i in range(num_shards)]
  records: List[Optional[bytes]] = [None] * len(selected)
  for f, path in enumerate(files):
    for r, serialized in enumerate(tf.data.TFRecordDataset(path)):
      n = wanted.get((f, r))
      if n is not None:
        records[n] = serialized.numpy()
  with contextlib.ExitStack() as stack:
    writers = [stack.enter_context(tf.io.TFRecordWriter(
        stack.enter_context(atomic_files.replacing(p)))) for p in paths]
    for n, serialized in enumerate(records):
      writers[n % num_shards].write(serialized)
  label_maps = sorted({os.path.join(os.path.dirname(f),
                                    schema.LABEL_MAP_FILENAME) for f in files})
  for lm in label_maps:
    if tf.io.gfile.exists(lm):
      tf.io.gfile.copy(lm, os.path.join(output_dir, schema.LABEL_MAP_FILENAME),
                       overwrite=True)
      break
  per_class = {int(c): int(((labels == c) & mask).sum())
               for c in np.unique(labels)}
  summary = {'fraction': float(fraction), 'seed': int(seed),
             'num_selected': len(selected), 'num_total': len(labels),
             'per_class': per_class, 'clip_keys': [k for k, _ in selected]}
  records_lib.write_json_atomic(os.path.join(output_dir, SUBSET_FILENAME),
                                summary)
  return dict(summary, files=paths)
