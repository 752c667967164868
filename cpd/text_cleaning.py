"""Cleaning of web video titles, as in the CPD paper.

Titles are noisy: emoji, URLs, HTML entities and tags, hashtags and mentions,
decorative symbols, full-width characters. The paper strips special symbols,
emoji, URLs and markup, normalises whitespace and case, and can keep only the
characters of chosen languages. Hashtag words are kept (`#baking` -> `baking`):
they are often the most informative words of a title.

This is the paper's Kinetics-title-clean, applied in the input pipeline
(`cpd_run.clean_titles`). Kinetics-title-tree (verbs and nouns of the parse of
the cleaned title) is `cpd.title_tree`, an offline step: a parse is too slow
to redo every epoch.
"""

import html
import re
import unicodedata

import numpy as np

_URL = re.compile(r'(?:https?://|ftp://|www\.)\S+|\b[\w.-]+\.(?:com|org|net|'
                  r'be|ly|io|tv|co)(?:/\S*)?\b', re.IGNORECASE)
_TAG = re.compile(r'<[^>]{0,200}>')
_MENTION = re.compile(r'(?<!\w)@\w+')
_SPACE = re.compile(r'\s+')

# Script names as they start Unicode character names ("LATIN SMALL LETTER A").
_SCRIPT_ALIASES = {
    'latin': ('LATIN',), 'cyrillic': ('CYRILLIC',), 'greek': ('GREEK',),
    'arabic': ('ARABIC',), 'hebrew': ('HEBREW',), 'devanagari': ('DEVANAGARI',),
    'thai': ('THAI',), 'hangul': ('HANGUL',),
    'cjk': ('CJK', 'HIRAGANA', 'KATAKANA', 'HANGUL', 'IDEOGRAPHIC'),
    'japanese': ('CJK', 'HIRAGANA', 'KATAKANA'), 'chinese': ('CJK',),
}


def _script(ch):
  try:
    return unicodedata.name(ch).split(' ')[0]
  except ValueError:
    return ''


def _is_variation_selector(ch):
  code = ord(ch)
  return 0xfe00 <= code <= 0xfe0f or 0xe0100 <= code <= 0xe01ef


def clean_title(text, lowercase=True, keep_scripts=None):
  """Cleans one title.

  Args:
    text: str or UTF-8 bytes.
    lowercase: lower-case the result.
    keep_scripts: None to keep letters of every script, or an iterable of
      script names (keys of `_SCRIPT_ALIASES`, e.g. ('latin',)); letters of
      other scripts are dropped. Digits are always kept.

  Returns:
    The cleaned title: words separated by single spaces, possibly ''.
  """
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  if not isinstance(text, str):
    raise ValueError(f'`text` must be str or bytes, got {type(text).__name__}')
  allowed = None
  if keep_scripts is not None:
    allowed = set()
    for name in keep_scripts:
      if name not in _SCRIPT_ALIASES:
        raise ValueError(f'`keep_scripts` entries must be in '
                         f'{sorted(_SCRIPT_ALIASES)}, got {name!r}')
      allowed.update(_SCRIPT_ALIASES[name])
  # Entities may be double-escaped ("&amp;amp;"): unescape until stable.
  for _ in range(3):
    unescaped = html.unescape(text)
    if unescaped == text:
      break
    text = unescaped
  text = _TAG.sub(' ', text)
  text = _URL.sub(' ', text)
  text = _MENTION.sub(' ', text)
  # Full-width letters and digits, ligatures, circled digits -> plain forms.
  text = unicodedata.normalize('NFKC', text)
  out = []
  for ch in text:
    category = unicodedata.category(ch)
    if category[0] == 'L':
      keep = allowed is None or _script(ch) in allowed
      out.append(ch if keep else ' ')
    elif category[0] == 'M':
      # Combining marks only after a kept letter (Devanagari vowel signs);
      # emoji variation selectors and stray marks go.
      after_letter = out and out[-1] != ' ' and not out[-1].isdigit()
      if after_letter and not _is_variation_selector(ch):
        out.append(ch)
    elif category == 'Nd' or ch == "'":
      out.append(ch)
    else:
      # Punctuation, symbols (emoji are So/Sk), separators, controls.
      out.append(' ')
  text = ''.join(out)
  # Apostrophes only inside words ("don't"), not as quotes.
  text = re.sub(r"(?<!\w)'|'(?!\w)", ' ', text)
  if lowercase:
    text = text.lower()
  return _SPACE.sub(' ', text).strip()


def clean_titles(titles, lowercase=True, keep_scripts=None):
  """`clean_title` on a string tensor of any shape, usable inside `tf.data`.

  Args:
    titles: tf.string tensor.
    lowercase: as in `clean_title`.
    keep_scripts: as in `clean_title`.

  Returns:
    tf.string tensor of the same shape.
  """
  # Imported here: the offline title tools (`cpd.title_tree`,
  # `cpd.title_stats`) use `clean_title` without paying for TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  titles = tf.convert_to_tensor(titles, tf.string)

  def _clean(array):
    flat = [clean_title(t, lowercase, keep_scripts).encode('utf-8')
            for t in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape)

  out = tf.numpy_function(_clean, [titles], tf.string, stateful=False)
  out.set_shape(titles.shape)
  return out
