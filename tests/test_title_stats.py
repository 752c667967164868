"""Table 6 statistics against values worked out by hand from the paper's words.

The readings under test (module docstring of `cpd.title_stats`): a class word
is a word of the video's own class (or of any class without labels); words
are those of the cleaned, lower-cased title, matched exactly; a parenthesised
qualifier is not part of a class name; "contains the entire class" means its
words in a contiguous run; Rel pools words over titles.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from cpd import title_files
from cpd import title_stats
from tests import test_title_tree
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSES = ['playing guitar', 'getting a haircut', 'walking the dog',
           'passing American football (in game)']
# (title, own class); cleaned words and hits worked out in the comments:
# own-class hits / any-class hits, whole own class? / whole any class?
TINY = [
    # playing the guitar: 2 (playing, guitar) / 3 (+the); no / no.
    ('Playing the Guitar!! 🎸', 'playing guitar'),
    # learn playing guitar at home: 2 / 2; yes / yes.
    ('learn playing guitar at home', 'playing guitar'),
    # my dog: 1 / 1; no / no.
    ('My DOG', 'walking the dog'),
    # getting a haircut lol: 3 / 3; yes / yes.
    ('getting a haircut LOL', 'getting a haircut'),
    # (no words): 0 / 0; no / no.
    ('', 'playing guitar'),
    # super bowl american football highlights: 2 / 2 ("(in game)" is not
    # part of the name, "passing" is missing); no / no.
    ('Super Bowl: American football highlights',
     'passing American football (in game)'),
    # the dog walking: 0 / 3; no / no (not in order).
    ('The dog walking', 'playing guitar'),
    # walking the dog with my guitar: 1 / 4; no / yes (walking the dog).
    ('walking the dog with my guitar', 'playing guitar'),
]
TITLES = [t for t, _ in TINY]
LABELS = [l for _, l in TINY]
NUM_WORDS = 3 + 5 + 2 + 4 + 0 + 5 + 3 + 6


def test_own_class_reading_by_hand():
  s = title_stats.title_stats(TITLES, CLASSES, LABELS)
  assert s['reading'] == 'own_class'
  assert (s['titles'], s['words'], s['class_words']) == (8, NUM_WORDS, 11)
  assert s['at_least_one'] == pytest.approx(6 / 8)
  assert s['all'] == pytest.approx(2 / 8)
  assert s['rel'] == pytest.approx(11 / 28)
  assert s['per_class'] == {
      'playing guitar': {'titles': 5, 'at_least_one': 3 / 5},
      'getting a haircut': {'titles': 1, 'at_least_one': 1.0},
      'walking the dog': {'titles': 1, 'at_least_one': 1.0},
      'passing American football (in game)': {'titles': 1,
                                              'at_least_one': 1.0}}


def test_any_class_reading_by_hand():
  s = title_stats.title_stats(TITLES, CLASSES)
  assert s['reading'] == 'any_class'
  assert s['class_words'] == 18
  assert s['at_least_one'] == pytest.approx(7 / 8)
  assert s['all'] == pytest.approx(3 / 8)
  assert s['rel'] == pytest.approx(18 / 28)
  assert 'per_class' not in s


def test_words_and_class_words():
  assert title_stats.words("Massaging a Person's HEAD!!") == [
      'massaging', 'a', "person's", 'head']
  assert title_stats.class_words('skiing (not slalom or crosscountry)') == (
      'skiing',)
  with pytest.raises(ValueError, match=r"class name '\(sport\)' has no"):
    title_stats.class_words('(sport)')
  assert title_stats.title_stats([], CLASSES)['at_least_one'] == 0.0


def test_label_errors():
  with pytest.raises(ValueError, match=r"entry 1 is 'juggling'"):
    title_stats.title_stats(['a', 'b'], CLASSES, ['playing guitar',
                                                  'juggling'])
  with pytest.raises(ValueError, match='1 entries for 2 titles'):
    title_stats.title_stats(['a', 'b'], CLASSES, ['playing guitar'])


def _write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return str(path)


def test_run_on_titles_file_manifest_and_records(tmp_path):
  classes = _write(tmp_path / 'classes.txt', CLASSES)
  titles = _write(tmp_path / 'titles.txt', TITLES)
  labels = _write(tmp_path / 'labels.txt', LABELS)
  out = tmp_path / 'stats.json'
  result = title_stats.run(classes=classes, titles=titles, labels=labels,
                           variants=['clean', 'as_is'],
                           output_json=str(out))
  assert result['num_titles'] == 8 and result['num_classes'] == 4
  own = result['stats']['own_class']
  assert own['clean']['rel'] == pytest.approx(11 / 28)
  # Words are those of the cleaned text either way.
  assert own['as_is']['rel'] == own['clean']['rel']
  assert result['stats']['any_class']['clean']['all'] == pytest.approx(3 / 8)
  assert json.loads(out.read_text(encoding='utf-8')) == result
  table = title_stats.format_table(result)
  assert 'title-clean' in table and '75.0' in table and '91.6' in table

  manifest = tmp_path / 'manifest.jsonl'
  manifest.write_text(''.join(
      json.dumps({'path': f'{i}.mp4', 'label': l, 'title': t},
                 ensure_ascii=False) + '\n'
      for i, (t, l) in enumerate(TINY)), encoding='utf-8')
  from_manifest = title_stats.run(classes=classes, titles=str(manifest))
  assert from_manifest['stats'] == {
      k: {'clean': v['clean']} for k, v in result['stats'].items()}

  # Records: two clips per video share its title and count once; the class
  # is the weak (query) label, not a relabelled one.
  records = tmp_path / 'records'
  records.mkdir()
  with tf.io.TFRecordWriter(str(records / 'clips-00000-of-00001.tfrecord')
                            ) as w:
    for c in range(2 * len(TINY)):
      title, label = TINY[c // 2]
      w.write(testing.make_fake_clip(
          c, num_frames=1, video_id=f'v{c // 2}', caption=title,
          label_index=0, label_text='spl class', weak_label_text=label))
  from_records = title_stats.run(classes=classes,
                                 records=str(records / 'clips-*.tfrecord'))
  assert from_records['num_titles'] == 8
  assert from_records['stats'] == from_manifest['stats']


def test_run_argument_errors(tmp_path):
  classes = _write(tmp_path / 'classes.txt', CLASSES)
  titles = _write(tmp_path / 'titles.txt', TITLES)
  with pytest.raises(ValueError, match='`variants`'):
    title_stats.run(classes=classes, titles=titles, variants=['raw'])
  with pytest.raises(ValueError, match='`spacy_pipeline`'):
    title_stats.run(classes=classes, titles=titles, variants=['tree'])
  with pytest.raises(ValueError, match='has 2 lines'):
    title_stats.run(classes=classes, titles=titles,
                    labels=_write(tmp_path / 'l.txt', LABELS[:2]))
  with pytest.raises(ValueError, match='repeats'):
    title_stats.run(classes=_write(tmp_path / 'c.txt', ['a b', 'a b']),
                    titles=titles)
  with pytest.raises(ValueError, match="'en_core_web_zz' is not installed"):
    title_stats.run(classes=classes, titles=titles, variants=['tree'],
                    spacy_pipeline='en_core_web_zz')


def test_tree_variant_and_cli(tmp_path):
  pipeline = test_title_tree.train_pipeline(tmp_path / 'pipeline')
  classes = _write(tmp_path / 'classes.txt',
                   ['washing car', 'riding horse', 'baking cookies'])
  manifest = tmp_path / 'manifest.csv'
  _write(manifest, ['path,label,title',
                    'a.mp4,washing car,Kids are washing the car!',
                    'b.mp4,riding horse,Tom riding a horse in Paris',
                    'c.mp4,baking cookies,How to bake cookies'])
  out = tmp_path / 'stats.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'cpd.title_stats', f'--classes={classes}',
       f'--titles={manifest}', '--variants=clean,tree',
       f'--spacy_pipeline={pipeline}', f'--output_json={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert 'title-tree' in proc.stdout
  own = json.loads(out.read_text(encoding='utf-8'))['stats']['own_class']
  # clean: kids are washing the car / tom riding a horse in paris / how to
  # bake cookies: every title has a class word, none the whole class in a
  # run, 2 + 2 + 1 class words of 15 ("bake" is not "baking": no lemmas).
  assert (own['clean']['at_least_one'], own['clean']['all']) == (1.0, 0.0)
  assert own['clean']['rel'] == pytest.approx(5 / 15)
  # tree: kids washing car / riding horse / bake cookies: the dropped words
  # make two class names contiguous (why Table 6's All is higher for tree).
  assert own['tree']['at_least_one'] == 1.0
  assert own['tree']['all'] == pytest.approx(2 / 3)
  assert own['tree']['rel'] == pytest.approx(5 / 7)


@pytest.mark.parametrize('row', ['{"title": ["a", "b"], "label": "x"}',
                                 '{"title": "t", "label": ["x"]}',
                                 '{"title": 5}'])
def test_manifest_fields_of_a_wrong_type_are_refused(tmp_path, row):
  """As the clip writer's manifest reader: never coerced (`["x"]` would be
  the class "['x']")."""
  path = tmp_path / 'm.jsonl'
  path.write_text('{"title": "ok", "label": "x"}\n' + row + '\n')
  with pytest.raises(ValueError, match=r"m\.jsonl' line 2: `(title|label)` "
                     r'must be a string, got (array|number)'):
    title_files.read_titles(str(path))
