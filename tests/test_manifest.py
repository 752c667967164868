"""Reading user manifests: CSV (BOM, CRLF, CR), JSONL, labels and rejects."""

import json
import os
import subprocess
import sys

import pytest

from tfrecords_tools import manifest as manifest_lib

BOM = b'\xef\xbb\xbf'
NO_BAD_TITLES = {'titles_not_utf8': 0}


def _write(path, data):
  """Writes the exact bytes a user's tool would (str is UTF-8 encoded)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data.encode('utf-8') if isinstance(data, str) else data)
  return str(path)


def _entry(ordinal, row, path, video_id, label, label_index, title='',
           start=None, end=None):
  return manifest_lib.VideoEntry(
      ordinal=ordinal, row=row, path=str(path), video_id=video_id,
      label=label, label_index=label_index, title=title, start=start, end=end)


def _reject(row, path, video_id, reason, message):
  return {'row': row, 'path': path, 'video_id': video_id, 'reason': reason,
          'message': message}


def test_csv_with_bom_and_crlf(tmp_path):
  """An Excel-style CSV (BOM, CRLF) reads every column; no spurious notes."""
  path = _write(tmp_path / 'm.csv', BOM + (
      'path,label,title,video_id,start,end\r\n'
      'a.mp4,dog,A dog,,,\r\n'
      'b.mp4,cat,Une café,b_id,1.5,4\r\n').encode('utf-8'))
  entries, rejects, class_names, notes = manifest_lib.read_manifest(path)
  assert entries == [
      _entry(0, 1, tmp_path / 'a.mp4', 'a', 'dog', 1, 'A dog'),
      _entry(1, 2, tmp_path / 'b.mp4', 'b_id', 'cat', 0, 'Une café', 1.5,
             4.0)]
  assert rejects == []
  assert class_names == ['cat', 'dog']
  assert notes == NO_BAD_TITLES


def test_csv_quoted_title_keeps_its_line_breaks(tmp_path):
  """A quoted multi-line title is kept exactly as written, not rewritten."""
  path = _write(tmp_path / 'm.csv', (
      'path,label,title\r\n'
      'a.mp4,dog,"first line\r\nsecond line"\r\n'
      'b.mp4,dog,"old mac\rbreak"\r\n'))
  entries, rejects, _, _ = manifest_lib.read_manifest(path)
  assert [(e.row, e.title) for e in entries] == [
      (1, 'first line\r\nsecond line'), (2, 'old mac\rbreak')]
  assert rejects == []


def test_csv_with_cr_only_line_ends(tmp_path):
  """Classic-Mac CSV (bare CR line ends) is split into its rows."""
  path = _write(tmp_path / 'm.csv', 'path,label\ra.mp4,dog\rb.mp4,cat\r')
  entries, rejects, class_names, _ = manifest_lib.read_manifest(path)
  assert entries == [_entry(0, 1, tmp_path / 'a.mp4', 'a', 'dog', 1),
                     _entry(1, 2, tmp_path / 'b.mp4', 'b', 'cat', 0)]
  assert rejects == []
  assert class_names == ['cat', 'dog']


def test_csv_without_a_required_column_is_refused(tmp_path):
  """A header lacking `label` stops the job instead of rejecting every row."""
  path = _write(tmp_path / 'm.csv', 'path,title\na.mp4,A\n')
  with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
    manifest_lib.read_manifest(path)


@pytest.mark.parametrize('name', ['m.json', 'm.jsonl'])
def test_json_and_jsonl_extensions_are_read_as_jsonl(tmp_path, name):
  """`.json` is JSONL too, not parsed as a CSV with a JSON header."""
  path = _write(tmp_path / name, (
      '{"path": "a.mp4", "label": "dog", "title": "x, y", "start": 2}\n'
      '{"path": "b.mp4", "label": "cat", "video_id": "vb", "end": 3.5}\n'))
  entries, rejects, class_names, notes = manifest_lib.read_manifest(path)
  assert entries == [
      _entry(0, 1, tmp_path / 'a.mp4', 'a', 'dog', 1, 'x, y', start=2.0),
      _entry(1, 2, tmp_path / 'b.mp4', 'vb', 'cat', 0, end=3.5)]
  assert rejects == []
  assert class_names == ['cat', 'dog']
  assert notes == NO_BAD_TITLES


def test_jsonl_blank_and_bad_lines_do_not_stop_reading(tmp_path):
  """Blank lines are skipped, bad lines become rejects; later rows are read."""
  path = _write(tmp_path / 'm.jsonl', (
      '{"path": "a.mp4", "label": "dog"}\n'
      '\n'
      'not json\n'
      '[1, 2]\n'
      '{"path": "b.mp4", "label": "dog"}\n'))
  entries, rejects, _, _ = manifest_lib.read_manifest(path)
  assert entries == [_entry(0, 1, tmp_path / 'a.mp4', 'a', 'dog', 0),
                     _entry(1, 5, tmp_path / 'b.mp4', 'b', 'dog', 0)]
  assert len(rejects) == 2
  bad_json = rejects[0]
  assert {k: v for k, v in bad_json.items() if k != 'message'} == {
      'row': 3, 'path': '', 'video_id': '', 'reason': manifest_lib.BAD_ROW}
  assert bad_json['message'].startswith('line 3 is not a JSON object: ')
  assert rejects[1] == _reject(
      4, '', '', manifest_lib.BAD_ROW,
      'line 4 is not a JSON object: not a JSON object')


def test_jsonl_missing_or_null_path_and_label_are_rejected(tmp_path):
  """An absent or null `path`/`label` is empty, never a made-up value."""
  path = _write(tmp_path / 'm.jsonl', (
      '{"label": "dog", "video_id": "v1"}\n'
      '{"path": null, "label": "dog"}\n'
      '{"path": "c.mp4"}\n'
      '{"path": "d.mp4", "label": null, "video_id": "v4"}\n'
      '{"path": "e.mp4", "label": "dog", "title": null}\n'))
  entries, rejects, _, _ = manifest_lib.read_manifest(path)
  assert rejects == [
      _reject(1, '', 'v1', manifest_lib.BAD_ROW, 'row 1: empty `path`'),
      _reject(2, '', '', manifest_lib.BAD_ROW, 'row 2: empty `path`'),
      _reject(3, 'c.mp4', '', manifest_lib.BAD_ROW, 'row 3: empty `label`'),
      _reject(4, 'd.mp4', 'v4', manifest_lib.BAD_ROW, 'row 4: empty `label`')]
  assert entries == [_entry(0, 5, tmp_path / 'e.mp4', 'e', 'dog', 0, '')]


def test_csv_bad_rows_become_rejects_with_row_path_and_message(tmp_path):
  """Each bad row is rejected with its own row, path, id and reason."""
  path = _write(tmp_path / 'm.csv', (
      'path,label,title,video_id,start,end\n'
      ',dog,t,v1,,\n'
      'b.mp4,,t,,,\n'
      'c.mp4,dog,t,v3,-1,\n'
      'd.mp4,dog,t,,,-2\n'
      'e.mp4,dog,t,v5,3,2\n'
      'f.mp4,dog,,,1.5,4\n'))
  entries, rejects, class_names, notes = manifest_lib.read_manifest(path)
  bad = manifest_lib.BAD_ROW
  assert rejects == [
      _reject(1, '', 'v1', bad, 'row 1: empty `path`'),
      _reject(2, 'b.mp4', '', bad, 'row 2: empty `label`'),
      _reject(3, 'c.mp4', 'v3', bad,
              "row 3: `start` must be >= 0 seconds, got '-1'"),
      _reject(4, 'd.mp4', '', bad,
              "row 4: `end` must be >= 0 seconds, got '-2'"),
      _reject(5, 'e.mp4', 'v5', bad, 'row 5: `end` (2.0) must be > `start` '
              '(3.0)')]
  assert entries == [_entry(0, 6, tmp_path / 'f.mp4', 'f', 'dog', 0, '',
                            1.5, 4.0)]
  assert class_names == ['dog']
  assert notes == NO_BAD_TITLES


def test_unknown_label_and_duplicate_video_id_rejects(tmp_path):
  """Label-list and duplicate-id rejects carry the absolute path and first row."""
  path = _write(tmp_path / 'm.csv', (
      'path,label,title,video_id\n'
      'z.mp4,dog,,other\n'
      'a.mp4,cat,,clip1\n'
      'b.mp4,bird,,clip2\n'
      'c.mp4,dog,,clip1\n'
      'sub/d.mp4,dog,,\n'
      'd.mp4,dog,,\n'))
  entries, rejects, class_names, _ = manifest_lib.read_manifest(
      path, labels=['dog', 'cat'])
  assert rejects == [
      _reject(3, str(tmp_path / 'b.mp4'), 'clip2', manifest_lib.UNKNOWN_LABEL,
              "row 3: label 'bird' is not in the label list"),
      _reject(4, str(tmp_path / 'c.mp4'), 'clip1',
              manifest_lib.DUPLICATE_VIDEO_ID,
              "row 4: video id 'clip1' already used by row 2")]
  assert entries == [
      _entry(0, 1, tmp_path / 'z.mp4', 'other', 'dog', 1),
      _entry(1, 2, tmp_path / 'a.mp4', 'clip1', 'cat', 0),
      _entry(2, 5, tmp_path / 'sub' / 'd.mp4', 'sub/d', 'dog', 1),
      _entry(3, 6, tmp_path / 'd.mp4', 'd', 'dog', 1)]
  assert class_names == ['cat', 'dog']


def test_default_video_id(tmp_path):
  """Id is the path under the manifest folder, else the file's stem."""
  here = str(tmp_path / 'lists')
  assert manifest_lib.default_video_id(
      str(tmp_path / 'lists' / 'sub' / 'deep' / 'clip.mp4'), here) == (
          'sub/deep/clip')
  assert manifest_lib.default_video_id(
      str(tmp_path / 'lists' / 'clip.v2.mp4'), here) == 'clip.v2'
  assert manifest_lib.default_video_id(
      str(tmp_path / 'videos' / 'clip.mp4'), here) == 'clip'
  assert manifest_lib.default_video_id('/elsewhere/x/clip.avi', here) == 'clip'


def test_read_manifest_default_ids_and_paths(tmp_path):
  """Relative, parent-folder and absolute paths: absolute path, right id."""
  absolute = tmp_path / 'abs' / 'c.mp4'
  path = _write(tmp_path / 'lists' / 'm.csv', (
      'path,label\n'
      'sub/a.mp4,dog\n'
      '../videos/b.mp4,dog\n'
      f'{absolute},dog\n'
      './sub/../e.mp4,dog\n'))
  entries, rejects, _, _ = manifest_lib.read_manifest(path)
  assert [(e.path, e.video_id) for e in entries] == [
      (str(tmp_path / 'lists' / 'sub' / 'a.mp4'), 'sub/a'),
      (str(tmp_path / 'videos' / 'b.mp4'), 'b'),
      (str(absolute), 'c'),
      (str(tmp_path / 'lists' / 'e.mp4'), 'e')]
  assert rejects == []


def test_titles_not_utf8_counts_only_undecodable_titles(tmp_path):
  """Bad bytes are counted (BOM still stripped); a real U+FFFD is not."""
  latin1 = _write(tmp_path / 'latin1.csv', BOM + (
      b'path,label,title\r\n'
      b'a.mp4,dog,caf\xe9\r\n'
      b'b.mp4,dog,plain\r\n'))
  entries, rejects, _, notes = manifest_lib.read_manifest(latin1)
  assert [(e.video_id, e.title) for e in entries] == [
      ('a', 'caf\ufffd'), ('b', 'plain')]
  assert rejects == []
  assert notes == {'titles_not_utf8': 1}

  clean = _write(tmp_path / 'clean.csv',
                 'path,label,title\na.mp4,dog,replacement \ufffd char\n')
  entries, _, _, notes = manifest_lib.read_manifest(clean)
  assert [e.title for e in entries] == ['replacement \ufffd char']
  assert notes == NO_BAD_TITLES


def test_read_label_list(tmp_path):
  """Names are stripped, blank lines skipped, returned sorted."""
  path = _write(tmp_path / 'labels.txt', ' dog \n\ncat\r\nbird\n')
  assert manifest_lib.read_label_list(path) == ['bird', 'cat', 'dog']


def test_read_label_list_refuses_a_name_given_twice(tmp_path):
  """A class listed twice would shift every later index: refuse it."""
  path = _write(tmp_path / 'labels.txt', 'dog\ncat\nbird\ncat\n')
  with pytest.raises(ValueError, match=r"repeats class names \['cat'\]"):
    manifest_lib.read_label_list(path)


def test_read_label_list_is_utf8_whatever_the_locale(tmp_path):
  """A UTF-8 labels file reads the same under a non-UTF-8 (C) locale."""
  path = _write(tmp_path / 'labels.txt', 'café\nnaïve\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(
      manifest_lib.__file__)))
  code = ('import json, sys\n'
          'from tfrecords_tools import manifest\n'
          'print(json.dumps([manifest.__file__,'
          ' manifest.read_label_list(sys.argv[1])]))\n')
  env = dict(os.environ, LC_ALL='C', LANG='C', PYTHONUTF8='0',
             PYTHONPATH=root)
  done = subprocess.run([sys.executable, '-c', code, path], cwd=root, env=env,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  module_file, names = json.loads(done.stdout)
  assert os.path.samefile(module_file, manifest_lib.__file__)
  assert names == ['café', 'naïve']


# ---- Field types: a wrong type is a bad row, never a coerced value ----


def _jsonl(tmp_path, rows):
  return _write(tmp_path / 'm.jsonl',
                ''.join(json.dumps(r) + '\n' for r in rows))


@pytest.mark.parametrize('field,value,got', [
    ('path', 5, 'number 5'),
    ('path', ['a.mp4'], 'array ["a.mp4"]'),
    ('path', True, 'boolean true'),
    ('label', ['x'], 'array ["x"]'),
    ('label', 3, 'number 3'),
    ('label', {'name': 'x'}, 'object {"name": "x"}'),
    ('label', False, 'boolean false'),
    ('video_id', 42, 'number 42'),
    ('video_id', ['v'], 'array ["v"]'),
    ('title', 1.5, 'number 1.5'),
    ('title', ['a', 'b'], 'array ["a", "b"]'),
])
def test_jsonl_text_field_of_another_type_is_a_bad_row(tmp_path, field, value,
                                                       got):
  """`"label": ["x"]` is not the class "['x']", `"path": 5` not a file `5`."""
  good = {'path': 'a.mp4', 'label': 'dog', 'video_id': 'va', 'title': 't'}
  path = _jsonl(tmp_path, [
      {'path': 'b.mp4', 'label': 'cat'},
      dict(good, **{field: value}),
      {'path': 'c.mp4', 'label': 'dog'}])
  entries, rejects, class_names, _ = manifest_lib.read_manifest(path)
  [reject] = rejects
  assert reject == _reject(
      2, good['path'] if field != 'path' else '',
      good['video_id'] if field != 'video_id' else '', manifest_lib.BAD_ROW,
      f'row 2: `{field}` must be a string, got {got}')
  # The rejected row adds no class and shifts no index.
  assert class_names == ['cat', 'dog']
  assert entries == [_entry(0, 1, tmp_path / 'b.mp4', 'b', 'cat', 0),
                     _entry(1, 3, tmp_path / 'c.mp4', 'c', 'dog', 1)]


@pytest.mark.parametrize('field', ['start', 'end'])
@pytest.mark.parametrize('value,problem', [
    (True, 'must be a number of seconds, got boolean true'),
    ([1], 'must be a number of seconds, got array [1]'),
    ({'s': 1}, 'must be a number of seconds, got object {"s": 1}'),
    ('soon', 'must be a number of seconds, got string "soon"'),
    (float('inf'), 'must be a finite number of seconds, got number Infinity'),
    ('inf', 'must be a finite number of seconds, got string "inf"'),
    (10**400, 'must be a finite number of seconds, got number 1000'),
], ids=['bool', 'array', 'object', 'word', 'inf', 'inf_string', 'huge_int'])
def test_jsonl_time_of_another_type_is_a_bad_row(tmp_path, field, value,
                                                 problem):
  """A boolean is not 1 s, a list does not crash the job, inf is refused."""
  path = _jsonl(tmp_path, [
      {'path': 'a.mp4', 'label': 'odd', field: value},
      {'path': 'b.mp4', 'label': 'dog', 'start': 1, 'end': '2.5'}])
  entries, rejects, class_names, _ = manifest_lib.read_manifest(path)
  [reject] = rejects
  assert {k: v for k, v in reject.items() if k != 'message'} == {
      'row': 1, 'path': 'a.mp4', 'video_id': '',
      'reason': manifest_lib.BAD_ROW}
  assert reject['message'].startswith(f'row 1: `{field}` {problem}'), (
      reject['message'])
  # Numbers, and strings that spell one (as in CSV), are seconds.
  assert entries == [_entry(0, 2, tmp_path / 'b.mp4', 'b', 'dog', 0,
                            start=1.0, end=2.5)]
  assert class_names == ['dog']


def test_jsonl_null_and_blank_optional_fields_are_absent(tmp_path):
  """null (or a blank string) is an absent optional field, not a bad row."""
  path = _jsonl(tmp_path, [
      {'path': 'a.mp4', 'label': 'dog', 'video_id': None, 'title': None,
       'start': None, 'end': None},
      {'path': 'b.mp4', 'label': 'dog', 'video_id': ' ', 'title': '',
       'start': '', 'end': ' '}])
  entries, rejects, _, _ = manifest_lib.read_manifest(path)
  assert rejects == []
  assert entries == [_entry(0, 1, tmp_path / 'a.mp4', 'a', 'dog', 0),
                     _entry(1, 2, tmp_path / 'b.mp4', 'b', 'dog', 0)]


@pytest.mark.parametrize('field', ['start', 'end'])
def test_csv_time_that_is_not_a_finite_number_is_a_bad_row(tmp_path, field):
  """CSV cells are text: a time must spell a finite number of seconds."""
  rows = ''.join(
      f'{name}.mp4,dog,{cell if field == "start" else ""},'
      f'{cell if field == "end" else ""}\n'
      for name, cell in [('a', 'inf'), ('b', 'ten'), ('c', '1e999'),
                         ('d', '2')])
  path = _write(tmp_path / 'm.csv', 'path,label,start,end\n' + rows)
  entries, rejects, _, _ = manifest_lib.read_manifest(path)
  bad = manifest_lib.BAD_ROW
  assert rejects == [
      _reject(1, 'a.mp4', '', bad, f'row 1: `{field}` must be a finite number'
              ' of seconds, got string "inf"'),
      _reject(2, 'b.mp4', '', bad, f'row 2: `{field}` must be a number of '
              'seconds, got string "ten"'),
      _reject(3, 'c.mp4', '', bad, f'row 3: `{field}` must be a finite number'
              ' of seconds, got string "1e999"')]
  assert [(e.row, e.start, e.end) for e in entries] == [
      (4, 2.0 if field == 'start' else None,
       2.0 if field == 'end' else None)]


def test_csv_row_with_more_cells_than_the_header_is_a_bad_row(tmp_path):
  """An unquoted comma shifts the columns after it: reject, don't drop."""
  path = _write(tmp_path / 'm.csv', (
      'path,label,title,video_id\n'
      'a.mp4,dog,hello, world,va\n'
      'b.mp4,cat,"hello, world",vb\n'
      'c.mp4,bird\n'))
  entries, rejects, class_names, _ = manifest_lib.read_manifest(path)
  assert rejects == [_reject(
      1, 'a.mp4', ' world', manifest_lib.BAD_ROW,
      'row 1: 5 cells, the header has 4 (an unquoted comma?)')]
  assert entries == [
      _entry(0, 2, tmp_path / 'b.mp4', 'vb', 'cat', 1, 'hello, world'),
      _entry(1, 3, tmp_path / 'c.mp4', 'c', 'bird', 0)]
  assert class_names == ['bird', 'cat']


def test_rejected_rows_never_add_a_class(tmp_path):
  """Classes come from usable rows only: a duplicate's label is no class."""
  path = _write(tmp_path / 'm.csv', (
      'path,label,video_id,end\n'
      'a.mp4,dog,v1,\n'
      'b.mp4,ant,v1,\n'
      'c.mp4,bee,v3,-1\n'
      'd.mp4,cat,v4,\n'))
  entries, rejects, class_names, _ = manifest_lib.read_manifest(path)
  assert [(r['row'], r['reason']) for r in rejects] == [
      (3, manifest_lib.BAD_ROW), (2, manifest_lib.DUPLICATE_VIDEO_ID)]
  assert class_names == ['cat', 'dog']
  assert [(e.video_id, e.label_index) for e in entries] == [('v1', 1),
                                                           ('v4', 0)]
