"""Every kind of bad gin config is one line naming the gin file and line.

Real gin files in `tmp_path`, parsed by `spl.main.parse_gin` (what
`python -m spl.main` runs; `spl.job.parse_gin` underneath, as in every gin
entry point).
"""

import re

import gin
import pytest

from spl import job
from spl import main

NAME = 'gin_errors_test_fn'


@gin.configurable(NAME)
def _fn(a=1, b=2):
  return a, b


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _gin(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return str(path)


def _error(files, bindings=()):
  with pytest.raises(ValueError) as err:
    main.parse_gin(files, list(bindings))
  message = str(err.value)
  assert '\n' not in message, message
  prefix = (f'bad gin config (files {list(files)}, bindings '
            f'{list(bindings)}): ')
  assert message.startswith(prefix), message
  return message[len(prefix):]


@pytest.mark.parametrize('text,line,reason', [
    (f'{NAME}.a = 1\n{NAME}.b 2\n', 2,
     "Couldn't parse statement, expected ':' or '='."),
    (f'{NAME}.a = 1\n\n{NAME}.b = [1, 2\n{NAME}.a = 3\n', 4,
     "Expected ',' or ']'."),
    # The tokenizer's errors name no file; the statement starts on line 2.
    (f'{NAME}.a = 1\n{NAME}.b = (1,\n  2,\n', 2,
     'EOF in multi-line statement'),
    (f'{NAME}:\n    a = 1\n  b = 2\n', 3,
     'unindent does not match any outer indentation level'),
], ids=['statement', 'value', 'unclosed_bracket', 'indentation'])
def test_parse_error_names_file_and_line(tmp_path, text, line, reason):
  path = _gin(tmp_path / 'bad.gin', text)
  assert _error([path]) == f'file {path!r}, line {line}: {reason}'


def test_unknown_configurable_names_file_and_line(tmp_path):
  path = _gin(tmp_path / 'bad.gin',
              f'{NAME}.a = 1\n# a comment\nno_such_configurable.x = 1\n')
  assert _error([path]) == (
      f"file {path!r}, line 3: No configurable matching "
      "'no_such_configurable'.")


def test_unknown_parameter_names_file_and_line(tmp_path):
  path = _gin(tmp_path / 'bad.gin', f'{NAME}.a = 1\n{NAME}.c = 3\n')
  assert _error([path]) == (
      f"file {path!r}, line 2: Configurable '{NAME}' doesn't have a "
      "parameter named 'c'.")


def test_unknown_reference_names_file_and_line(tmp_path):
  path = _gin(tmp_path / 'bad.gin', f'\n{NAME}.a = @no_such_function\n')
  assert _error([path]) == (
      f"file {path!r}, line 2: No configurable matching reference "
      "'@no_such_function'.")


@pytest.mark.parametrize('statement,module', [
    ('import no_such_module_for_gin', 'no_such_module_for_gin'),
    ('import spl.no_such_module_for_gin', 'spl.no_such_module_for_gin'),
    ('from spl import no_such_module_for_gin', 'spl.no_such_module_for_gin'),
])
def test_missing_import_names_file_and_line(tmp_path, statement, module):
  # Was a bare ModuleNotFoundError that did not name the gin file.
  path = _gin(tmp_path / 'bad.gin', f'# header\n{statement}\n{NAME}.a = 1\n')
  assert _error([path]) == (
      f"file {path!r}, line 2: No module named '{module}'")


def test_missing_include_names_file_and_line(tmp_path):
  path = _gin(tmp_path / 'bad.gin',
              f"{NAME}.a = 1\ninclude 'nowhere/missing.gin'\n")
  for _ in range(2):  # The repository root is searched, and listed, once.
    assert _error([path]) == (
        f"file {path!r}, line 2: Unable to open file: nowhere/missing.gin. "
        f"Searched config paths: ['', {job.REPO_ROOT!r}].")


@pytest.mark.parametrize('text,line,reason', [
    (f'{NAME}.a = 1\n{NAME}.zz = 2\n', 2,
     f"Configurable '{NAME}' doesn't have a parameter named 'zz'."),
    (f'{NAME}.a = 1\nimport no_such_module_for_gin\n', 2,
     "No module named 'no_such_module_for_gin'"),
    ("include 'nowhere/missing.gin'\n", 1,
     'Unable to open file: nowhere/missing.gin.'),
    (f'{NAME}.a = 1\n{NAME}.b = """never\nclosed\n', 2,
     'EOF in multi-line string'),
], ids=['parameter', 'import', 'include', 'unclosed_string'])
def test_error_in_an_included_file_names_it_and_its_includer(
    tmp_path, text, line, reason):
  inner = _gin(tmp_path / 'sub' / 'inner.gin', text)
  outer = _gin(tmp_path / 'outer.gin', f"{NAME}.a = 1\n\ninclude '{inner}'\n")
  assert _error([outer]).startswith(
      f'file {inner!r}, line {line}, included from file {outer!r}, line 3: '
      f'{reason}')


def test_later_file_is_the_one_named(tmp_path):
  good = _gin(tmp_path / 'good.gin', f'{NAME}.a = 1\n')
  bad = _gin(tmp_path / 'bad.gin', f'{NAME}.b = 2\n{NAME}.q = 3\n')
  assert _error([good, bad]).startswith(f'file {bad!r}, line 2: ')


@pytest.mark.parametrize('binding,reason', [
    (f'{NAME}.zz = 1',
     f"Configurable '{NAME}' doesn't have a parameter named 'zz'."),
    ('no_such_configurable.x = 1',
     "No configurable matching 'no_such_configurable'."),
    (f'{NAME}.a = ', 'Unable to parse value.'),
    (f'{NAME}.a = (1,', 'EOF in multi-line statement'),
    ('import no_such_module_for_gin',
     "No module named 'no_such_module_for_gin'"),
])
def test_bad_binding_is_named(tmp_path, binding, reason):
  path = _gin(tmp_path / 'ok.gin', f'{NAME}.a = 1\n')
  bindings = [f'{NAME}.b = 5', binding]
  assert _error([path], bindings) == f'binding {binding!r}: {reason}'


def test_bad_default_binding_is_named():
  with pytest.raises(ValueError, match=re.escape(
      f"default binding '{NAME}.q = 2': Configurable '{NAME}' doesn't "
      "have a parameter named 'q'.")):
    job.parse_gin([], [], defaults=[f'{NAME}.a = 2', f'{NAME}.q = 2'])


def test_unsatisfied_required_names_its_declaration(tmp_path):
  # Checked once everything is parsed, where gin knows no places any more.
  inner = _gin(tmp_path / 'data.gin',
               '# DATA = %gin.REQUIRED in a comment\nDATA = %gin.REQUIRED\n')
  outer = _gin(tmp_path / 'run.gin', f"{NAME}.a = %DATA\ninclude '{inner}'\n")
  assert _error([outer]) == (
      f'file {inner!r}, line 2: DATA/macro.value set to `%gin.REQUIRED` but '
      'not subsequently overridden.')
  gin.clear_config()
  main.parse_gin([outer], ['DATA = 3'])
  assert _fn() == (3, 2)


def test_unknown_macro_names_its_use(tmp_path):
  path = _gin(tmp_path / 'bad.gin', f'{NAME}.a = 1\n\n{NAME}.b = %NOT_SET\n')
  assert _error([path]) == (
      f"file {path!r}, line 3: No bindings specified for "
      "'NOT_SET/gin.macro'")
