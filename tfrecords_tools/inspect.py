r"""Validate clip records against the schema, summarise them, draw a contact sheet.

  python -m tfrecords_tools.inspect 'records/web/clips-*.tfrecord' \
      --contact_sheet=/tmp/sheet.png

Every record is checked (required keys, schema version, frame count, every
frame a JPEG of the declared size, labels inside the label map next to the
shards, unique clip keys, contiguous clip indices); problems are printed with
the file and record number, and the exit code is non-zero if any is found.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from absl import flags
import numpy as np
import tensorflow as tf

from tfrecords_tools import atomic_files
from tfrecords_tools import cli
from tfrecords_tools import file_patterns
from tfrecords_tools import records
from tfrecords_tools import schema


def _jpeg_shape(data: bytes) -> Optional[tuple]:
  try:
    return tuple(tf.io.extract_jpeg_shape(data).numpy()[:2])
  except tf.errors.InvalidArgumentError:
    return None


def inspect_records(pattern: str, *, max_problems: int = 50,
                    sheet_clips: int = 6) -> Dict:
  """Validates and summarises every record matching `pattern`.

  Returns:
    A dict with counts, histograms, `problems` (strings naming file and
    record) and `samples` (a few clips' frames for the contact sheet).
  """
  try:
    files = file_patterns.match(pattern, 'pattern')
  except file_patterns.NoMatchingFilesError as e:
    raise FileNotFoundError(f'no files match {pattern!r} ({e})') from e
  label_map_path = os.path.join(os.path.dirname(files[0]),
                                schema.LABEL_MAP_FILENAME)
  class_names = (records.read_label_map(label_map_path)
                 if tf.io.gfile.exists(label_map_path) else None)
  problems: List[str] = []
  labels = collections.Counter()
  weak = collections.Counter()
  frames_per_clip = []
  indices, keys = [], collections.Counter()
  videos = set()
  samples = []
  total_bytes = 0

  def problem(msg):
    if len(problems) < max_problems:
      problems.append(msg)

  n = 0
  for path in files:
    try:
      for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        n += 1
        total_bytes += len(raw)
        where = f'{os.path.basename(path)} record {i}'
        try:
          clip = records.parse_clip_example(raw)
        except ValueError as e:
          problem(f'{where}: {e}')
          continue
        if clip[schema.SCHEMA_VERSION_KEY] != schema.SCHEMA_VERSION:
          problem(f'{where}: schema version {clip[schema.SCHEMA_VERSION_KEY]}'
                  f' != {schema.SCHEMA_VERSION}')
        frames = clip[schema.IMAGE_KEY]
        frames_per_clip.append(len(frames))
        if len(frames) != clip[schema.NUM_FRAMES_KEY]:
          problem(f'{where}: {len(frames)} frames but '
                  f'{schema.NUM_FRAMES_KEY}={clip[schema.NUM_FRAMES_KEY]}')
        size = (clip[schema.IMAGE_HEIGHT_KEY], clip[schema.IMAGE_WIDTH_KEY])
        # Every frame's JPEG header is read (cheap); pixels are not decoded.
        for t, f in enumerate(frames):
          shape = _jpeg_shape(f)
          if shape is None:
            problem(f'{where}: frame {t} is not a valid JPEG')
            break
          if shape != size:
            problem(f'{where}: frame {t} is {shape}, record says {size}')
            break
        label = clip[schema.LABEL_INDEX_KEY]
        labels[label] += 1
        weak[clip[schema.WEAK_LABEL_INDEX_KEY]] += 1
        if class_names is not None and not 0 <= label < len(class_names):
          problem(f'{where}: label {label} outside the label map '
                  f'({len(class_names)} classes)')
        indices.append(clip[schema.CLIP_INDEX_KEY])
        keys[clip[schema.CLIP_KEY_KEY]] += 1
        videos.add(clip[schema.VIDEO_ID_KEY])
        if len(samples) < sheet_clips:
          samples.append((clip[schema.CLIP_KEY_KEY], clip[schema.LABEL_TEXT_KEY],
                          frames))
    except tf.errors.DataLossError as e:
      problem(f'{os.path.basename(path)}: corrupt TFRecord file ({e.message})')
  dup = [k for k, c in keys.items() if c > 1]
  if dup:
    problem(f'{len(dup)} clip keys occur more than once, e.g. {dup[:3]}')
  if indices and sorted(indices) != list(range(len(indices))):
    problem(f'clip indices are not 0..{len(indices) - 1} (contiguous, unique)')
  fpc = np.asarray(frames_per_clip or [0])
  name = (lambda i: class_names[i] if class_names and 0 <= i < len(
      class_names) else str(i))
  return {
      'files': len(files), 'records': n, 'videos': len(videos),
      'bytes': total_bytes,
      'frames_per_clip': {'min': int(fpc.min()), 'mean': float(fpc.mean()),
                          'max': int(fpc.max())},
      'labels': {name(k): v for k, v in sorted(labels.items())},
      'weak_labels': {name(k): v for k, v in sorted(weak.items())},
      'problems': problems, 'samples': samples,
  }


def write_contact_sheet(samples, path: str, frames_per_clip: int = 6) -> None:
  """A grid PNG: one row per clip, evenly spaced frames across it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not samples:
    raise ValueError('no clips to draw')
  rows = len(samples)
  fig, axes = plt.subplots(rows, frames_per_clip,
                           figsize=(2 * frames_per_clip, 1.6 * rows),
                           squeeze=False)
  for r, (key, label, frames) in enumerate(samples):
    picks = np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int)
    for c, t in enumerate(picks):
      ax = axes[r][c]
      ax.imshow(tf.io.decode_jpeg(frames[t]).numpy())
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(f'{label}\n{key}', fontsize=7)
      ax.set_title(f'frame {t}', fontsize=7)
  fig.tight_layout()
  try:
    with atomic_files.replacing(path) as tmp:
      fig.savefig(tmp, dpi=80, format='png')
  finally:
    plt.close(fig)


def format_report(report: Dict) -> str:
  lines = [f"{report['records']} clips from {report['videos']} videos in "
           f"{report['files']} files ({report['bytes'] / 1e6:.1f} MB)",
           'frames per clip: min {min} mean {mean:.1f} max {max}'.format(
               **report['frames_per_clip']),
           'label histogram:']
  top = max(report['labels'].values() or [1])
  width = max([len(k) for k in report['labels']] + [5])
  for name, count in report['labels'].items():
    bar = '#' * max(1, int(30 * count / top))
    lines.append(f'  {name:<{width}} {count:7d} {bar}')
  if report['problems']:
    lines.append(f"PROBLEMS ({len(report['problems'])} shown):")
    lines += [f'  {p}' for p in report['problems']]
  else:
    lines.append('all records valid')
  return '\n'.join(lines)


def _define_flags(fv: flags.FlagValues) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  flags.DEFINE_string('contact_sheet', None,
                      'PNG path for a contact sheet (default: contact_sheet.png '
                      'next to the shards).', flag_values=fv)
  flags.DEFINE_integer('sheet_clips', 6, 'Clips (rows) on the contact sheet.',
                       flag_values=fv)
  flags.DEFINE_bool('json', False, 'Print the report as JSON.', flag_values=fv)


TOOL = cli.Tool(name='inspect', command='python -m tfrecords_tools.inspect',
                doc=__doc__, define_flags=_define_flags,
                positional=('FILE_PATTERN',))


def main(args: cli.Args) -> int:
  """Inspects the records of a parsed command line; returns the exit status."""
  fv, (pattern,) = args.flags, args.positional
  try:
    report = inspect_records(pattern, sheet_clips=fv.sheet_clips)
  except (FileNotFoundError, ValueError) as e:
    print(f'inspect: error: {e}', file=sys.stderr)
    return 1
  sheet = fv.contact_sheet or os.path.join(
      os.path.dirname(file_patterns.match(pattern, 'pattern')[0]),
      'contact_sheet.png')
  if report['samples']:
    write_contact_sheet(report['samples'], sheet)
  samples = report.pop('samples')
  if fv.json:
    print(json.dumps(report, indent=1))
  else:
    print(format_report(report))
    if samples:
      print(f'contact sheet: {sheet}')
  return 1 if report['problems'] else 0


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point (also the `inspect-clips` console script): the exit status."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run())
