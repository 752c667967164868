"""tfrecords_tools.file_patterns: one glob syntax (commas join globs)."""

import os
import re

import pytest

from tfrecords_tools import file_patterns


@pytest.fixture()
def tree(tmp_path):
  for sub, names in (('a', ('x-1.rec', 'x-2.rec', 'y.txt')),
                     ('b', ('x-1.rec', 'x-3.rec'))):
    os.makedirs(tmp_path / sub)
    for name in names:
      (tmp_path / sub / name).write_text(name)
  return tmp_path


@pytest.mark.parametrize('match', [file_patterns.match,
                                   file_patterns.match_beam])
def test_union_of_comma_separated_globs_sorted_and_unique(tree, match):
  a, b = str(tree / 'a' / 'x-*.rec'), str(tree / 'b' / 'x-*.rec')
  expected = sorted(str(tree / p) for p in (
      'a/x-1.rec', 'a/x-2.rec', 'b/x-1.rec', 'b/x-3.rec'))
  # The second part first, spaces, an empty part and an overlap.
  got = match(f' {b} ,{a},, {tree}/a/x-1.rec')
  assert got == expected
  assert match(a) == expected[:2]


@pytest.mark.parametrize('match', [file_patterns.match,
                                   file_patterns.match_beam])
def test_a_part_matching_nothing_is_named(tree, match):
  missing = str(tree / 'c' / '*.rec')
  with pytest.raises(file_patterns.NoMatchingFilesError,
                     match=re.escape(f"`--records` '{missing}' matches no files")):
    match(f'{tree}/a/*.rec,{missing}', '`--records`')
  # A ValueError to callers that catch bad arguments, a FileNotFoundError to
  # those that catch missing files.
  for base in (ValueError, FileNotFoundError):
    with pytest.raises(base):
      match(missing)


@pytest.mark.parametrize('bad', ['', ' ', ' , ,', None, 5])
def test_empty_or_non_string_pattern_refused(bad):
  with pytest.raises(ValueError, match='`eval_file_pattern` must be a '
                     'non-empty glob'):
    file_patterns.match(bad, '`eval_file_pattern`')
