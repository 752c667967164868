r"""Kinetics-title-tree: only the verbs and nouns of each title (CPD Sec. 4.1).

The paper makes two text variants of the crawled YouTube titles: -title-clean
(special symbols, non-English words and emoji deleted: `cpd.text_cleaning`)
and -title-tree: "we use StanfordNLP to obtain the dependency tree of
sentences in titles and only reserve verbs and nouns". Here a spaCy pipeline
parses each title and the words it tags as verbs or nouns are kept, in title
order, joined by single spaces ('' when there is none).

Readings of that one sentence:
* Tags: coarse Universal POS VERB and NOUN only; UD (StanfordNLP's tag set)
  gives proper nouns (PROPN) and auxiliaries (AUX: "is", "can") tags of their
  own, and the paper names verbs and nouns (`pos_tags` changes it).
* Input: the cleaned title (`clean_title` defaults, as the trainer cleans);
  the paper does not say, and Table 6 fits it: -tree contains the whole class
  name more often than -clean (44.3% vs 38.4%), as dropping the words between
  a class's verb and noun turns "playing the guitar" into "playing guitar".
  `clean_first=False` parses the raw title.
* The tree selects nothing beyond the tags, so components that run after the
  last one able to set tags (NER, lemmatizer, ...) are skipped.

How it reaches training: titles travel in the records' `caption/string` and
the trainer cleans them inside tf.data (gin `cpd_run.clean_titles`). A parse
costs about a millisecond per title on CPU, too much to redo every epoch in
the input pipeline, so the tree variant is made once, offline:

  # A copy of clip records with tree captions (frames copied byte for byte):
  python -m cpd.title_tree --spacy_pipeline=en_core_web_sm \
      --records='WS/records/web/clips-*.tfrecord' \
      --output_dir=WS/records/web_tree
  # Or a manifest (CSV / JSONL `title` column) or a titles file (one per
  # line), e.g. before records are written:
  python -m cpd.title_tree --spacy_pipeline=/models/my_spacy_pipeline \
      --titles=WS/videos/web/manifest.csv \
      --output=WS/videos/web/manifest_tree.csv

then train with TRAIN_FILES on the new records. `cpd_run.clean_titles` may
stay True: tree words are words of the cleaned title, cleaning keeps them.

`--spacy_pipeline` is an installed pipeline package (e.g. `en_core_web_sm`,
installed by the user from its wheel) or the directory of a pipeline saved
with `nlp.to_disk`. Nothing is downloaded: a pipeline that is not there fails
before any work, naming it. It must set coarse POS tags: a tagger with an
attribute_ruler tag map (the `en_core_web_*` pipelines) or a morphologizer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from absl import logging

from cpd import text_cleaning
from cpd import title_files

# The paper keeps "verbs and nouns"; see the module docstring.
TREE_POS = ('NOUN', 'VERB')
# Universal POS tags (and spaCy's SPACE): what `pos_tags` may name.
UPOS_TAGS = frozenset((
    'ADJ', 'ADP', 'ADV', 'AUX', 'CCONJ', 'DET', 'INTJ', 'NOUN', 'NUM', 'PART',
    'PRON', 'PROPN', 'PUNCT', 'SCONJ', 'SPACE', 'SYM', 'VERB', 'X'))
# Factories whose components never set POS tags: skipped when they run after
# every component that might (what they add is not used here).
_NOT_TAGGING_FACTORIES = frozenset((
    'ner', 'beam_ner', 'entity_ruler', 'entity_linker', 'span_ruler',
    'lemmatizer', 'trainable_lemmatizer', 'textcat', 'textcat_multilabel',
    'spancat', 'spancat_singlelabel', 'span_finder'))
_PROBE = 'the boy is playing the guitar in the park'
STATS_FILENAME = 'title_tree.json'

Titles = Iterable[Union[str, bytes]]


def _install_hint(pipeline: str) -> str:
  return (f'install its package into this Python ({sys.executable}), e.g. '
          f'`pip install {pipeline}-<version>-py3-none-any.whl` (the wheel '
          f'from the spaCy models release) or `python -m spacy download '
          f'{pipeline}` where the network allows it, or pass the directory '
          f'of a pipeline saved with `nlp.to_disk`; nothing is downloaded at '
          f'run time')


def check_pipeline_exists(pipeline: str) -> None:
  """Checks that `pipeline` names an installed package or a saved pipeline.

  Cheap (no model is loaded), so entry points call it before any work.

  Args:
    pipeline: spaCy pipeline package name or directory.

  Raises:
    ValueError: naming `pipeline` and how to install it.
  """
  import spacy  # pylint: disable=g-import-not-at-top
  if not isinstance(pipeline, str) or not pipeline.strip():
    raise ValueError(f'`spacy_pipeline` must name an installed spaCy pipeline '
                     f'package (e.g. en_core_web_sm) or a saved pipeline '
                     f'directory, got {pipeline!r}')
  # spacy.load's order: an installed package first, then a directory.
  if spacy.util.is_package(pipeline):
    return
  path = os.path.expanduser(pipeline)
  if os.path.exists(path):
    if not os.path.isfile(os.path.join(path, 'config.cfg')):
      raise ValueError(f'`spacy_pipeline` {pipeline!r} is not a saved spaCy '
                       f'pipeline: a directory written by `nlp.to_disk` holds '
                       f'config.cfg and meta.json')
    return
  if os.sep in pipeline or pipeline.startswith(('.', '~')):
    raise ValueError(f'`spacy_pipeline` directory {pipeline!r} does not '
                     f'exist')
  raise ValueError(f'spaCy pipeline {pipeline!r} is not installed: '
                   f'{_install_hint(pipeline)}')


def _skippable(nlp) -> List[str]:
  """Components after the last one that might set POS tags."""
  names = list(nlp.pipe_names)
  tagging = [i for i, n in enumerate(names)
             if nlp.get_pipe_meta(n).factory not in _NOT_TAGGING_FACTORIES]
  last = tagging[-1] if tagging else -1
  return names[last + 1:]


def check_pipeline(nlp, pipeline: Optional[str] = None) -> List[str]:
  """Checks that `nlp` sets coarse POS tags; returns the components to skip.

  Args:
    nlp: a loaded `spacy.Language`.
    pipeline: its name or path, for the error message.

  Raises:
    ValueError: the pipeline sets no `token.pos_`, naming it and its
      components.
  """
  skip = _skippable(nlp)
  if not any(t.pos_ for t in nlp(_PROBE, disable=skip)):
    name = pipeline or nlp.meta.get('name', '?')
    raise ValueError(
        f'spaCy pipeline {name!r} (components {list(nlp.pipe_names)}) sets no '
        f'coarse part-of-speech tags (token.pos_): title-tree needs a tagger '
        f'with an attribute_ruler tag map (as en_core_web_sm) or a '
        f'morphologizer')
  return skip


def load_pipeline(pipeline: str):
  """Loads an installed or saved spaCy pipeline that sets POS tags.

  Args:
    pipeline: package name (e.g. 'en_core_web_sm') or directory saved with
      `nlp.to_disk`.

  Returns:
    The `spacy.Language`.

  Raises:
    ValueError: not installed, not a pipeline, unloadable, or no POS tags;
      the message names `pipeline`.
  """
  import spacy  # pylint: disable=g-import-not-at-top
  check_pipeline_exists(pipeline)
  try:
    nlp = spacy.load(os.path.expanduser(pipeline))
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f'could not load spaCy pipeline {pipeline!r} with spaCy '
                     f'{spacy.__version__}: {e}') from e
  check_pipeline(nlp, pipeline)
  return nlp


def check_pos_tags(pos_tags: Sequence[str]) -> frozenset:
  """The tags as a set; ValueError naming `pos_tags` if empty or unknown."""
  if isinstance(pos_tags, str):
    raise ValueError(f'`pos_tags` must be a sequence of tags, got the string '
                     f'{pos_tags!r}')
  tags = frozenset(pos_tags)
  unknown = sorted(tags - UPOS_TAGS)
  if not tags or unknown:
    raise ValueError(f'`pos_tags` must be Universal POS tags from '
                     f'{sorted(UPOS_TAGS)}, got {list(pos_tags)!r}')
  return tags


class _Progress:
  """Logs titles parsed, rate and ETA every `every_seconds` (long inputs)."""

  def __init__(self, total: int, every_seconds: float):
    self._total, self._every = total, every_seconds
    self._t0 = self._last = time.monotonic()
    self.done = 0
    self.logged = False

  def update(self, n: int = 1) -> None:
    self.done += n
    now = time.monotonic()
    if now - self._last >= self._every:
      self._last = now
      rate = self.done / max(now - self._t0, 1e-9)
      logging.info('title-tree: %d / %d titles parsed (%.0f titles/s), ETA '
                   '%.0f s', self.done, self._total, rate,
                   (self._total - self.done) / max(rate, 1e-9))
      self.logged = True

  def finish(self) -> None:
    if self.logged:
      logging.info('title-tree: %d titles parsed in %.0f s', self.done,
                   time.monotonic() - self._t0)


def _as_text(title: Any, i: int) -> str:
  if isinstance(title, bytes):
    return title.decode('utf-8', errors='replace')
  if not isinstance(title, str):
    raise ValueError(f'`titles` must hold str or bytes, item {i} is '
                     f'{type(title).__name__}')
  return title


def title_tree(titles: Titles, nlp, *, pos_tags: Sequence[str] = TREE_POS,
               clean_first: bool = True, batch_size: int = 256,
               progress_seconds: float = 10.0) -> List[str]:
  """Kinetics-title-tree of each title: its verbs and nouns, in order.

  Args:
    titles: str or UTF-8 bytes titles.
    nlp: spaCy pipeline (`load_pipeline`).
    pos_tags: coarse POS tags kept (default VERB and NOUN).
    clean_first: parse `text_cleaning.clean_title(title)` (default, see the
      module docstring) rather than the raw title.
    batch_size: titles per `nlp.pipe` batch.
    progress_seconds: log progress this often (long inputs only).

  Returns:
    One string per title: the kept tokens joined by single spaces.

  Raises:
    ValueError: bad arguments, or a pipeline that sets no POS tags.
  """
  tags = check_pos_tags(pos_tags)
  if batch_size <= 0:
    raise ValueError(f'`batch_size` must be > 0, got {batch_size}')
  texts = [_as_text(t, i) for i, t in enumerate(titles)]
  if clean_first:
    texts = [text_cleaning.clean_title(t) for t in texts]
  skip = check_pipeline(nlp)
  # Clips of one video and re-uploads share titles: parse each text once.
  unique = list(dict.fromkeys(texts))
  progress = _Progress(len(unique), progress_seconds)
  tree = {}
  for text, doc in zip(unique, nlp.pipe(unique, batch_size=batch_size,
                                        disable=skip)):
    tree[text] = ' '.join(t.text for t in doc if t.pos_ in tags)
    progress.update()
  progress.finish()
  return [tree[t] for t in texts]


# ---- Tool ----


def run(*, spacy_pipeline: str, records: Optional[str] = None,
        output_dir: Optional[str] = None, titles: Optional[str] = None,
        output: Optional[str] = None, pos_tags: Sequence[str] = TREE_POS,
        clean_first: bool = True, batch_size: int = 256) -> Dict[str, Any]:
  """Rewrites clip records or a titles file / manifest with title-tree.

  Every argument and the pipeline are checked before anything is read or
  written.

  Args:
    spacy_pipeline: as `load_pipeline`.
    records: clip-record pattern (with `output_dir`), or
    output_dir: directory for the rewritten records and `title_tree.json`.
    titles: titles file (one per line) or CSV / JSONL manifest (with
      `output`).
    output: the rewritten file.
    pos_tags, clean_first, batch_size: as `title_tree`.

  Returns:
    Counts and settings (also written as `title_tree.json` with records).
  """
  import spacy  # pylint: disable=g-import-not-at-top
  check_pos_tags(pos_tags)
  if bool(records) == bool(titles):
    raise ValueError('give exactly one of `records` (with `output_dir`) and '
                     '`titles` (with `output`)')
  if records:
    if output:
      raise ValueError('`output` is for `titles`; records go to `output_dir`')
    title_files.check_output_dir(title_files.list_shards(records), output_dir)
  else:
    if output_dir:
      raise ValueError('`output_dir` is for `records`; a titles file goes to '
                       '`output`')
    if not os.path.isfile(titles):
      raise FileNotFoundError(f'`titles` file {titles!r} does not exist')
    title_files.check_output_file(titles, output)
  nlp = load_pipeline(spacy_pipeline)
  empty = []

  def transform(texts):
    out = title_tree(texts, nlp, pos_tags=pos_tags, clean_first=clean_first,
                     batch_size=batch_size)
    empty.append(sum(not t for t in out))
    return out

  if records:
    counts = title_files.rewrite_record_titles(records, output_dir, transform)
  else:
    counts = title_files.rewrite_titles_file(titles, output, transform)
  stats = dict(
      counts, unique_titles_without_verb_or_noun=empty[0] if empty else 0,
      spacy_pipeline=spacy_pipeline,
      pipeline_meta={k: nlp.meta.get(k) for k in ('lang', 'name', 'version')},
      spacy_version=spacy.__version__, pos_tags=sorted(check_pos_tags(
          pos_tags)), clean_first=clean_first,
      source=records or titles)
  if records:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(os.path.join(output_dir, STATS_FILENAME), 'w') as f:
      f.write(json.dumps(stats, indent=1, sort_keys=True) + '\n')
  return stats


def _define_flags(fv) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('spacy_pipeline', None, 'Installed spaCy pipeline '
                      'package (e.g. en_core_web_sm) or saved pipeline '
                      'directory.', flag_values=fv)
  flags.DEFINE_string('records', None, 'Clip-record file pattern to rewrite '
                      '(caption/string), with --output_dir.', flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'New directory for the records.',
                      flag_values=fv)
  flags.DEFINE_string('titles', None, 'Titles file (one per line) or CSV / '
                      'JSONL manifest (title column), with --output.',
                      flag_values=fv)
  flags.DEFINE_string('output', None, 'The rewritten titles file / manifest.',
                      flag_values=fv)
  flags.DEFINE_list('pos_tags', list(TREE_POS), 'Coarse POS tags kept.',
                    flag_values=fv)
  flags.DEFINE_bool('clean_first', True, 'Parse the cleaned title '
                    '(cpd.text_cleaning) rather than the raw one.',
                    flag_values=fv)
  flags.DEFINE_integer('batch_size', 256, 'Titles per nlp.pipe batch.',
                       flag_values=fv)


def main(args) -> int:
  """Runs the tool for a parsed command line (`cli.Args`); the exit status."""
  f = args.flags
  try:
    stats = run(spacy_pipeline=f.spacy_pipeline, records=f.records,
                output_dir=f.output_dir, titles=f.titles, output=f.output,
                pos_tags=f.pos_tags, clean_first=f.clean_first,
                batch_size=f.batch_size)
  except (FileNotFoundError, ValueError) as e:
    print(f'title_tree: error: {e}', file=sys.stderr)
    return 1
  where = f.output_dir or f.output
  print(f"title-tree of {stats['unique_titles']} distinct titles "
        f"({stats['unique_titles_without_verb_or_noun']} without a verb or "
        f"noun) -> {where}")
  print(json.dumps(stats, sort_keys=True))
  return 0


if __name__ == '__main__':
  from tfrecords_tools import cli  # pylint: disable=g-import-not-at-top
  sys.exit(cli.run(cli.Tool(
      name='title_tree', command='python -m cpd.title_tree', doc=__doc__,
      define_flags=_define_flags, required=('spacy_pipeline',)), main))
