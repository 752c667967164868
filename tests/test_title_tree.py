"""Kinetics-title-tree with real spaCy pipelines trained here, never faked.

Each pipeline is trained in about a second on a few hand-annotated titles
(POS tags, heads and labels) until it reproduces them, saved with
`nlp.to_disk` and loaded back by path through `cpd.title_tree`.
"""

import csv
import json
import os
import random
import subprocess
import sys

import pytest
import spacy
from spacy.training import Example

from cpd import text_cleaning
from cpd import title_tree
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (cleaned title, coarse POS, fine tag, head index, dependency label).
ANNOTATED = [
    ('playing guitar in the park',
     'VERB NOUN ADP DET NOUN', 'VBG NN IN DT NN', [0, 0, 0, 4, 2],
     'ROOT dobj prep det pobj'),
    ('tom riding a horse in paris',
     'PROPN VERB DET NOUN ADP PROPN', 'NNP VBG DT NN IN NNP',
     [1, 1, 3, 1, 1, 4], 'nsubj ROOT det dobj prep pobj'),
    ('how to bake cookies', 'ADV PART VERB NOUN', 'WRB TO VB NNS',
     [2, 2, 2, 2], 'advmod aux ROOT dobj'),
    ('funny dog surfing big waves', 'ADJ NOUN VERB ADJ NOUN',
     'JJ NN VBG JJ NNS', [1, 2, 2, 4, 2], 'amod nsubj ROOT amod dobj'),
    ('my cat is sleeping', 'PRON NOUN AUX VERB', 'PRP$ NN VBZ VBG',
     [1, 3, 3, 3], 'poss nsubj aux ROOT'),
    ('girls dancing on the beach', 'NOUN VERB ADP DET NOUN',
     'NNS VBG IN DT NN', [1, 1, 1, 4, 2], 'nsubj ROOT prep det pobj'),
    ('best cookies ever', 'ADJ NOUN ADV', 'JJS NNS RB', [1, 1, 1],
     'amod ROOT advmod'),
    ('kids are washing the car', 'NOUN AUX VERB DET NOUN',
     'NNS VBP VBG DT NN', [2, 2, 2, 4, 2], 'nsubj aux ROOT det dobj'),
]
TITLES = [a[0] for a in ANNOTATED]
# What the paper's "verbs and nouns" keeps of each, by hand.
EXPECTED_TREE = ['playing guitar park', 'riding horse', 'bake cookies',
                 'dog surfing waves', 'cat sleeping', 'girls dancing beach',
                 'cookies', 'kids washing car']


def _reproduces(nlp, with_tags):
  for text, pos, tags, heads, deps in ANNOTATED:
    doc = nlp(text)
    got = [t.tag_ if with_tags else t.pos_ for t in doc]
    if (got != (tags if with_tags else pos).split() or
        [t.head.i for t in doc] != heads or
        [t.dep_ for t in doc] != deps.split()):
      return False
  return True


def train_pipeline(path, kind='morphologizer'):
  """Trains and saves a small pipeline that reproduces `ANNOTATED`.

  Args:
    path: directory for `nlp.to_disk`.
    kind: 'morphologizer' (sets coarse POS itself) + parser, or 'tagger'
      (fine tags) + parser + attribute_ruler (tag -> POS map) + ner, the
      layout of en_core_web_sm.

  Returns:
    `path`.
  """
  spacy.util.fix_random_seed(0)
  nlp = spacy.blank('en')
  nlp.add_pipe('morphologizer' if kind == 'morphologizer' else 'tagger')
  # Default min_action_freq (30) folds rare labels into 'dep'.
  nlp.add_pipe('parser', config={'min_action_freq': 1})
  examples = []
  for text, pos, tags, heads, deps in ANNOTATED:
    annotation = {'heads': heads, 'deps': deps.split()}
    annotation['pos' if kind == 'morphologizer' else 'tags'] = (
        pos if kind == 'morphologizer' else tags).split()
    examples.append(Example.from_dict(nlp.make_doc(text), annotation))
  if kind == 'tagger':
    nlp.add_pipe('attribute_ruler')
    nlp.add_pipe('ner')
  optimizer = nlp.initialize(lambda: examples)
  if kind == 'tagger':
    # After initialize(), which clears the ruler's patterns.
    tag_map = {}
    for _, pos, tags, _, _ in ANNOTATED:
      tag_map.update(zip(tags.split(), pos.split()))
    for tag, pos in sorted(tag_map.items()):
      nlp.get_pipe('attribute_ruler').add(patterns=[[{'TAG': tag}]],
                                          attrs={'POS': pos})
  rng = random.Random(0)
  for _ in range(300):
    rng.shuffle(examples)
    nlp.update(examples, sgd=optimizer, drop=0.0, losses={})
    if _reproduces(nlp, with_tags=kind == 'tagger'):
      break
  assert _reproduces(nlp, with_tags=kind == 'tagger'), 'did not converge'
  nlp.to_disk(path)
  return str(path)


@pytest.fixture(scope='module')
def pipeline_dir(tmp_path_factory):
  return train_pipeline(tmp_path_factory.mktemp('morphologizer_pipeline'))


def _independent_tree(nlp, text, tags=('VERB', 'NOUN')):
  return ' '.join(t.text for t in nlp(text) if t.pos_ in tags)


def test_keeps_exactly_the_verbs_and_nouns_the_pipeline_tags(pipeline_dir):
  nlp = title_tree.load_pipeline(pipeline_dir)
  reference = spacy.load(pipeline_dir)
  assert [_independent_tree(reference, t) for t in TITLES] == EXPECTED_TREE
  assert title_tree.title_tree(TITLES, nlp, batch_size=3) == EXPECTED_TREE
  # PROPN and AUX are not verbs or nouns in UD; `pos_tags` widens the set.
  assert title_tree.title_tree(
      TITLES[1:2], nlp, pos_tags=('VERB', 'NOUN', 'PROPN')) == [
          'tom riding horse paris']
  assert title_tree.title_tree(TITLES[4:5], nlp, pos_tags=['AUX']) == ['is']


def test_cleans_before_parsing_and_keeps_order_duplicates_empties(
    pipeline_dir):
  nlp = title_tree.load_pipeline(pipeline_dir)
  reference = spacy.load(pipeline_dir)
  raw = ['🔥 Playing GUITAR in the Park!!! #music', b'how to bake cookies',
         '', 'Playing guitar in the park', '🔥🔥', 'how to bake cookies']
  texts = [text_cleaning.clean_title(t) for t in raw]
  expected = [_independent_tree(reference, t) for t in texts]
  assert title_tree.title_tree(raw, nlp) == expected
  assert expected[1] == expected[5] == 'bake cookies'
  assert expected[2] == expected[4] == ''
  # Raw titles as the parser sees them, case kept.
  raw_expected = [_independent_tree(reference, t) for t in
                  ['Playing guitar in the park']]
  assert title_tree.title_tree(raw[3:4], nlp, clean_first=False) == (
      raw_expected)


def test_en_core_web_layout_tagger_attribute_ruler_ner(tmp_path):
  path = train_pipeline(tmp_path / 'tagger_pipeline', kind='tagger')
  nlp = title_tree.load_pipeline(path)
  assert nlp.pipe_names == ['tagger', 'parser', 'attribute_ruler', 'ner']
  # NER runs after the last tagging component: not needed, skipped.
  assert title_tree.check_pipeline(nlp) == ['ner']
  reference = spacy.load(path)
  assert [_independent_tree(reference, t) for t in TITLES] == EXPECTED_TREE
  assert title_tree.title_tree(TITLES, nlp) == EXPECTED_TREE


def test_pipeline_errors_name_the_pipeline(tmp_path):
  with pytest.raises(ValueError, match=r"'en_core_web_zz' is not installed"
                     r".*pip install.*spacy download en_core_web_zz"):
    title_tree.load_pipeline('en_core_web_zz')
  with pytest.raises(ValueError, match='does not exist'):
    title_tree.load_pipeline(str(tmp_path / 'missing'))
  (tmp_path / 'notes.txt').write_text('not a pipeline')
  with pytest.raises(ValueError, match='is not a saved spaCy pipeline'):
    title_tree.load_pipeline(str(tmp_path))
  spacy.blank('en').to_disk(tmp_path / 'blank')
  with pytest.raises(ValueError, match=r"blank.*sets no coarse part-of-"):
    title_tree.load_pipeline(str(tmp_path / 'blank'))
  with pytest.raises(ValueError, match='sets no coarse part-of-speech'):
    title_tree.title_tree(['a title'], spacy.blank('en'))


def test_argument_errors(pipeline_dir):
  nlp = title_tree.load_pipeline(pipeline_dir)
  with pytest.raises(ValueError, match='`pos_tags`'):
    title_tree.title_tree(['x'], nlp, pos_tags=['NOUNS'])
  with pytest.raises(ValueError, match='`pos_tags`'):
    title_tree.title_tree(['x'], nlp, pos_tags='NOUN')
  with pytest.raises(ValueError, match='`batch_size`'):
    title_tree.title_tree(['x'], nlp, batch_size=0)
  with pytest.raises(ValueError, match='item 1 is int'):
    title_tree.title_tree(['x', 3], nlp)


def test_rewrites_manifests_and_titles_files(pipeline_dir, tmp_path):
  reference = spacy.load(pipeline_dir)
  rows = [{'path': 'a.mp4', 'label': 'playing guitar',
           'title': 'Playing GUITAR in the park!!'},
          {'path': 'b.mp4', 'label': 'baking cookies',
           'title': 'How to bake cookies 🍪'},
          {'path': 'c.mp4', 'label': 'baking cookies',
           'title': 'How to bake cookies 🍪'}]
  expected = [_independent_tree(reference, text_cleaning.clean_title(
      r['title'])) for r in rows]
  manifest = tmp_path / 'manifest.csv'
  with open(manifest, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, ['path', 'label', 'title'])
    writer.writeheader()
    writer.writerows(rows)
  out = tmp_path / 'manifest_tree.csv'
  stats = title_tree.run(spacy_pipeline=pipeline_dir, titles=str(manifest),
                         output=str(out))
  assert stats['titles'] == 3 and stats['unique_titles'] == 2
  with open(out, newline='', encoding='utf-8') as f:
    got = list(csv.DictReader(f))
  assert [r['title'] for r in got] == expected
  assert [(r['path'], r['label']) for r in got] == [
      (r['path'], r['label']) for r in rows]

  jsonl = tmp_path / 'manifest.jsonl'
  jsonl.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n'
                           for r in rows), encoding='utf-8')
  title_tree.run(spacy_pipeline=pipeline_dir, titles=str(jsonl),
                 output=str(tmp_path / 'tree.jsonl'))
  got = [json.loads(line) for line in
         (tmp_path / 'tree.jsonl').read_text(encoding='utf-8').splitlines()]
  assert got == [dict(r, title=e) for r, e in zip(rows, expected)]

  lines = tmp_path / 'titles.txt'
  lines.write_text(''.join(r['title'] + '\n' for r in rows), encoding='utf-8')
  title_tree.run(spacy_pipeline=pipeline_dir, titles=str(lines),
                 output=str(tmp_path / 'tree.txt'))
  assert (tmp_path / 'tree.txt').read_text(encoding='utf-8') == ''.join(
      e + '\n' for e in expected)
  with pytest.raises(ValueError, match='is the input file'):
    title_tree.run(spacy_pipeline=pipeline_dir, titles=str(lines),
                   output=str(lines))


def test_rewrites_record_captions_frames_untouched(pipeline_dir, tmp_path):
  reference = spacy.load(pipeline_dir)
  src = tmp_path / 'records'
  testing.write_fake_clip_records(str(src), num_clips=6, num_shards=2)
  out = tmp_path / 'records_tree'
  stats = title_tree.run(spacy_pipeline=pipeline_dir,
                         records=str(src / 'clips-*.tfrecord'),
                         output_dir=str(out))
  assert stats['shards'] == 2 and stats['records'] == 6
  before = testing.parse_all(str(src / 'clips-*.tfrecord'))
  after = testing.parse_all(str(out / 'clips-*.tfrecord'))
  assert sorted(os.listdir(out)) == sorted(os.listdir(src) + [
      title_tree.STATS_FILENAME])
  assert len(after) == len(before) == 6
  for b, a in zip(before, after):
    caption = b.pop(schema.CAPTION_KEY)
    assert a.pop(schema.CAPTION_KEY) == _independent_tree(
        reference, text_cleaning.clean_title(caption))
    assert a == b  # Frames and every other key as they were.
  written = json.loads((out / title_tree.STATS_FILENAME).read_text())
  assert written['pos_tags'] == ['NOUN', 'VERB']
  assert written['clean_first'] is True
  with pytest.raises(ValueError, match='holds the input shards'):
    title_tree.run(spacy_pipeline=pipeline_dir,
                   records=str(src / 'clips-*.tfrecord'), output_dir=str(src))


def test_empty_shards_are_rewritten_as_empty_files(pipeline_dir, tmp_path):
  """More shards than clips (the writer's and relabel's output often has
  empty shards): every shard is rewritten, the empty ones as empty files."""
  src = tmp_path / 'records'
  testing.write_fake_clip_records(str(src), num_clips=2, num_shards=3)
  sizes = {p.name: p.stat().st_size for p in src.glob('clips-*.tfrecord')}
  assert len(sizes) == 3 and 0 in sizes.values()
  out = tmp_path / 'records_tree'
  stats = title_tree.run(spacy_pipeline=pipeline_dir,
                         records=str(src / 'clips-*.tfrecord'),
                         output_dir=str(out))
  assert stats['shards'] == 3 and stats['records'] == 2
  for name, size in sizes.items():
    assert ((out / name).stat().st_size == 0) == (size == 0), name
  assert len(testing.parse_all(str(out / 'clips-*.tfrecord'))) == 2
  assert not list(out.glob('*.tmp-*'))


def _cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'cpd.title_tree', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)


def test_cli(pipeline_dir, tmp_path):
  titles = tmp_path / 'titles.txt'
  titles.write_text('how to bake cookies\nFunny dog surfing big waves\n',
                    encoding='utf-8')
  out = tmp_path / 'tree.txt'
  proc = _cli(f'--spacy_pipeline={pipeline_dir}', f'--titles={titles}',
              f'--output={out}')
  assert proc.returncode == 0, proc.stderr
  assert out.read_text(encoding='utf-8') == (
      'bake cookies\ndog surfing waves\n')
  assert 'title-tree of 2 distinct titles' in proc.stdout
  # A pipeline that is not installed fails before anything is written.
  missing = tmp_path / 'never.txt'
  proc = _cli('--spacy_pipeline=en_core_web_zz', f'--titles={titles}',
              f'--output={missing}')
  assert proc.returncode == 1
  assert "spaCy pipeline 'en_core_web_zz' is not installed" in proc.stderr
  assert not missing.exists()


def test_logs_progress_on_long_inputs(pipeline_dir, caplog):
  nlp = title_tree.load_pipeline(pipeline_dir)
  caplog.set_level('INFO')
  many = [f'{t} {i}' for i in range(50) for t in TITLES]
  out = title_tree.title_tree(many, nlp, batch_size=64, progress_seconds=0)
  assert len(out) == len(many)
  assert '400 / 400 titles parsed' in caplog.text
  assert 'title-tree: 400 titles parsed in' in caplog.text
