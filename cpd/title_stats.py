r"""How much of the titles is about the action class: CPD Table 6 (appendix D).

The paper measures Kinetics-210k's title-clean and title-tree text with three
shares (Table 6: title-tree 90.5 / 44.3 / 46.3, title-clean 91.6 / 38.4 /
26.0):

  At Least One  "the proportion of text information that contains at least
                one word in action classes of Kinetics-400";
  All           "the proportion of text information that contains the entire
                action class";
  Rel           "the proportion of word in text information that is relevant
                to action classes".

Readings (the paper defines no more than the sentences above):
* Class: each video's own class (Figure 2 ranks classes by "at least one word
  in label occurring in according title"); without labels, any of the
  classes (the caption's "action classes of Kinetics-400"). With labels both
  are reported, own class first.
* Words: the words of `text_cleaning.clean_title` (lower-cased, punctuation
  and emoji gone, inner apostrophes kept) on both sides, matched exactly: no
  lemmas, no stop list (so "a" of "getting a haircut" is a class word).
* A Kinetics qualifier in parentheses ("(not in game)", "(sport)") is not
  part of the class name.
* "Contains the entire action class": the class's words appear in the title
  as a contiguous run, in order ("playing the guitar" does not contain
  "playing guitar"; its tree "playing guitar" does: Table 6's All is higher
  for -tree).
* Rel: class words over all words, pooled over titles (not a mean of
  per-title shares); a title without words counts as a title without class
  word.

Titles come as users hold them (`cpd.title_files`): a titles file with an
aligned labels file, a manifest (`title`, `label` columns), or clip records
(caption and `clip/weak_label/text`, one per video). The titles are raw; the
variants are made here: 'clean' (`clean_title`), 'tree' (`cpd.title_tree`,
needs --spacy_pipeline), 'as_is' (e.g. a file already rewritten by
`cpd.title_tree`).

  python -m cpd.title_stats --titles=WS/videos/kinetics/manifest.csv \
      --classes=kinetics400_classes.txt --variants=clean,tree \
      --spacy_pipeline=en_core_web_sm --output_json=WS/title_stats.json
  python -m cpd.title_stats --titles=titles.txt --labels=labels.txt \
      --classes=kinetics400_classes.txt
  python -m cpd.title_stats --records='WS/records/k400/clips-*.tfrecord' \
      --classes=kinetics400_classes.txt
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cpd import text_cleaning
from cpd import title_files

OWN_CLASS = 'own_class'
ANY_CLASS = 'any_class'
VARIANTS = ('clean', 'tree', 'as_is')
VARIANT_NAMES = {'clean': 'title-clean', 'tree': 'title-tree',
                 'as_is': 'as given'}
# Table 6 of the paper, in percent, for the printed comparison.
PAPER_TABLE6 = {
    'tree': {'at_least_one': 90.5, 'all': 44.3, 'rel': 46.3},
    'clean': {'at_least_one': 91.6, 'all': 38.4, 'rel': 26.0}}
_QUALIFIER = re.compile(r'\([^)]*\)')


def words(text: str) -> List[str]:
  """The words statistics compare: those of the cleaned, lower-cased text."""
  return text_cleaning.clean_title(text).split()


def class_words(name: str) -> Tuple[str, ...]:
  """Words of a class name without its parenthesised qualifier.

  Raises:
    ValueError: naming `name` if nothing is left.
  """
  out = tuple(words(_QUALIFIER.sub(' ', name)))
  if not out:
    raise ValueError(f'class name {name!r} has no words')
  return out


def _contains(title: Sequence[str], phrase: Tuple[str, ...]) -> bool:
  n = len(phrase)
  return any(tuple(title[i:i + n]) == phrase
             for i in range(len(title) - n + 1))


def title_stats(titles: Sequence[str], class_names: Sequence[str],
                labels: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Table 6's three shares of `titles` (already the variant to measure).

  Args:
    titles: one text per video.
    class_names: every class name, e.g. Kinetics-400's.
    labels: the class name of each title: the own-class reading; None: any
      class (see the module docstring).

  Returns:
    {'reading', 'titles', 'words', 'class_words' (title words that are class
    words), 'at_least_one', 'all', 'rel'} with shares in [0, 1]; with labels
    also 'per_class': class -> {'titles', 'at_least_one'} (Figure 2).

  Raises:
    ValueError: a label not in `class_names` (naming it and its title), a
      length mismatch, a class name without words, or no class names.
  """
  names = list(class_names)
  if not names:
    raise ValueError('`class_names` must not be empty')
  phrases = {n: class_words(n) for n in names}
  if labels is not None:
    if len(labels) != len(titles):
      raise ValueError(f'`labels` has {len(labels)} entries for '
                       f'{len(titles)} titles')
    unknown = [(i, l) for i, l in enumerate(labels) if l not in phrases]
    if unknown:
      raise ValueError(f'`labels` entry {unknown[0][0]} is {unknown[0][1]!r}, '
                       f'not a class name ({len(unknown)} unknown labels); '
                       f'classes are e.g. {names[:3]}')
  vocabulary = {w for p in phrases.values() for w in p}
  by_first = collections.defaultdict(list)
  for p in set(phrases.values()):
    by_first[p[0]].append(p)
  n_any = n_all = n_words = n_rel = 0
  per_class = collections.defaultdict(lambda: [0, 0])
  for i, title in enumerate(titles):
    ws = words(title)
    if labels is None:
      hits = sum(w in vocabulary for w in ws)
      # Only the classes whose first word is at position j can start there.
      whole = any(tuple(ws[j:j + len(p)]) == p
                  for j, w in enumerate(ws) for p in by_first.get(w, ()))
    else:
      own = phrases[labels[i]]
      own_words = set(own)
      hits = sum(w in own_words for w in ws)
      whole = _contains(ws, own)
      per_class[labels[i]][0] += 1
      per_class[labels[i]][1] += hits > 0
    n_any += hits > 0
    n_all += whole
    n_rel += hits
    n_words += len(ws)
  n = len(titles)
  out = {'reading': ANY_CLASS if labels is None else OWN_CLASS,
         'titles': n, 'words': n_words, 'class_words': n_rel,
         'at_least_one': n_any / n if n else 0.0,
         'all': n_all / n if n else 0.0,
         'rel': n_rel / n_words if n_words else 0.0}
  if labels is not None:
    out['per_class'] = {c: {'titles': per_class[c][0],
                            'at_least_one': per_class[c][1] / per_class[c][0]}
                        for c in names if per_class[c][0]}
  return out


def variant_texts(titles: Sequence[str], variant: str, nlp=None) -> List[str]:
  """The titles as `variant` ('clean', 'tree' with `nlp`, 'as_is')."""
  if variant == 'clean':
    return [text_cleaning.clean_title(t) for t in titles]
  if variant == 'tree':
    if nlp is None:
      raise ValueError("variant 'tree' needs a spaCy pipeline "
                       "(`spacy_pipeline`)")
    from cpd import title_tree  # pylint: disable=g-import-not-at-top
    return title_tree.title_tree(titles, nlp)
  if variant == 'as_is':
    return list(titles)
  raise ValueError(f'`variants` entries must be in {VARIANTS}, got '
                   f'{variant!r}')


def run(*, classes: str, titles: Optional[str] = None,
        labels: Optional[str] = None, records: Optional[str] = None,
        variants: Sequence[str] = ('clean',),
        spacy_pipeline: Optional[str] = None,
        output_json: Optional[str] = None) -> Dict[str, Any]:
  """Reads titles and classes, measures every variant under each reading.

  Arguments and the spaCy pipeline are checked before titles are read.

  Args:
    classes: class list, one name per line.
    titles: titles file (with `labels` for the own-class reading) or
      manifest; or
    labels: one class name per line, aligned with a titles file.
    records: clip-record pattern instead of `titles`.
    variants: among 'clean', 'tree', 'as_is'.
    spacy_pipeline: for 'tree' (`cpd.title_tree.load_pipeline`).
    output_json: where to write the result (optional).

  Returns:
    {'source', 'num_titles', 'classes', 'num_classes', 'stats':
    {reading: {variant: title_stats(...)}}, 'paper_table6'}.
  """
  variants = list(dict.fromkeys(variants))
  bad = [v for v in variants if v not in VARIANTS]
  if not variants or bad:
    raise ValueError(f'`variants` must be among {VARIANTS}, got {variants}')
  if bool(titles) == bool(records):
    raise ValueError('give exactly one of `titles` and `records`')
  if labels and not titles:
    raise ValueError('`labels` goes with a `titles` file')
  if ('tree' in variants) != bool(spacy_pipeline):
    raise ValueError("`spacy_pipeline` is needed for, and only for, variant "
                     "'tree'")
  class_names = title_files.read_class_names(classes)
  for name in class_names:
    class_words(name)
  for path, what in ((titles, '`titles` file'), (labels, '`labels` file')):
    if path and not os.path.isfile(path):
      raise FileNotFoundError(f'{what} {path!r} does not exist')
  if records:
    title_files.list_shards(records)
  nlp = None
  if spacy_pipeline:
    from cpd import title_tree  # pylint: disable=g-import-not-at-top
    nlp = title_tree.load_pipeline(spacy_pipeline)
  if records:
    texts, video_labels = title_files.read_record_titles(records)
  else:
    texts, video_labels = title_files.read_titles(titles, labels)
  readings = [(ANY_CLASS, None)]
  if video_labels is not None:
    readings.insert(0, (OWN_CLASS, video_labels))
  stats: Dict[str, Dict[str, Any]] = {r: {} for r, _ in readings}
  for variant in variants:
    variant_titles = variant_texts(texts, variant, nlp)
    for reading, reading_labels in readings:
      stats[reading][variant] = title_stats(variant_titles, class_names,
                                            reading_labels)
  result = {'source': records or titles, 'num_titles': len(texts),
            'classes': classes, 'num_classes': len(class_names),
            'stats': stats, 'paper_table6': PAPER_TABLE6}
  if output_json:
    with open(output_json, 'w', encoding='utf-8') as f:
      f.write(json.dumps(result, indent=1, ensure_ascii=False) + '\n')
  return result


def format_table(result: Dict[str, Any]) -> str:
  """Table 6 as printed text: one block per reading, one row per variant."""
  lines = [f"{result['num_titles']} titles, {result['num_classes']} classes "
           f"({result['source']})"]
  header = f"{'text':<12} {'at least one':>12} {'all':>7} {'rel':>7}"
  for reading, by_variant in result['stats'].items():
    lines += ['', f"class word = a word of {reading.replace('_', ' ')} "
                  f'(%)', header]
    for variant, s in by_variant.items():
      lines.append(f"{VARIANT_NAMES[variant]:<12} "
                   f"{100 * s['at_least_one']:>12.1f} {100 * s['all']:>7.1f} "
                   f"{100 * s['rel']:>7.1f}")
  lines += ['', 'paper, Table 6 (Kinetics-210k, %)', header]
  for variant, p in PAPER_TABLE6.items():
    lines.append(f"{VARIANT_NAMES[variant]:<12} {p['at_least_one']:>12.1f} "
                 f"{p['all']:>7.1f} {p['rel']:>7.1f}")
  return '\n'.join(lines)


def _define_flags(fv) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('classes', None, 'Class list, one name per line.',
                      flag_values=fv)
  flags.DEFINE_string('titles', None, 'Titles file (one per line) or CSV / '
                      'JSONL manifest (title, label columns).', flag_values=fv)
  flags.DEFINE_string('labels', None, 'Class of each line of a titles file, '
                      'aligned (own-class reading).', flag_values=fv)
  flags.DEFINE_string('records', None, 'Clip-record pattern instead of '
                      '--titles (caption, weak label; one per video).',
                      flag_values=fv)
  flags.DEFINE_list('variants', ['clean'], f'Among {list(VARIANTS)}.',
                    flag_values=fv)
  flags.DEFINE_string('spacy_pipeline', None, "For variant 'tree': installed "
                      'spaCy pipeline or saved pipeline directory.',
                      flag_values=fv)
  flags.DEFINE_string('output_json', None, 'Write the result here.',
                      flag_values=fv)


def main(args) -> int:
  """Runs the tool for a parsed command line (`cli.Args`); the exit status."""
  f = args.flags
  try:
    result = run(classes=f.classes, titles=f.titles, labels=f.labels,
                 records=f.records, variants=f.variants,
                 spacy_pipeline=f.spacy_pipeline, output_json=f.output_json)
  except (FileNotFoundError, ValueError) as e:
    print(f'title_stats: error: {e}', file=sys.stderr)
    return 1
  print(format_table(result))
  if f.output_json:
    print(f'written: {f.output_json}')
  return 0


if __name__ == '__main__':
  from tfrecords_tools import cli  # pylint: disable=g-import-not-at-top
  sys.exit(cli.run(cli.Tool(
      name='title_stats', command='python -m cpd.title_stats', doc=__doc__,
      define_flags=_define_flags, required=('classes',)), main))
