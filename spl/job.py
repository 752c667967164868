"""How every gin-driven entry point starts a job, and records what it ran.

`spl.main` (training, evaluation, prediction, CPD pre-training),
`cpd.evaluate` and `spl.attention_maps` parse their gin files here, the same
way: files may be given relative to the working directory or to the
repository root (gin `include`s resolve against the root too, so a command
works from any directory); a missing file, an unknown configurable or
parameter, a syntax error, a missing `import`ed module or `include`d file, or
an unsatisfied `%gin.REQUIRED` fails at once, before anything is built, with a
one-line `ValueError` that names the files and bindings, where the problem is
(the gin file and line, and the files that include it, or the binding) and
gin's own message. Each then writes the operative config (every parameter the
run actually used) next to its outputs with `write_operative_config`.
"""

import contextlib
import os
import re
import sys
import tokenize
from typing import Iterator, Optional, Sequence, Tuple

import gin
from gin import config_parser
import tensorflow as tf

from tfrecords_tools import atomic_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_search_path_added = False

# What gin appends to an error raised while it handles a statement (its
# `utils.try_with_location`), once per level of `include`, innermost first.
_GIN_LOCATION = re.compile(
    r'\n  In (?:file "(?P<file>[^"\n]*)",|bindings string) line '
    r'(?P<line>\d+)\n[^\n]*(?:\n *\^)?')
# Errors of a config, as gin (or an `import` it runs) raises them.
_CONFIG_ERRORS = (ValueError, SyntaxError, KeyError, OSError, TypeError,
                  ImportError, tokenize.TokenError)


class GinConfigError(ValueError):
  """A gin file or binding that cannot be used (the entry points print it as
  one line, without a traceback)."""


def add_repository_search_path() -> None:
  """Puts the repository root on gin's search path, once per process (gin
  lists every copy in its errors)."""
  global _search_path_added
  if not _search_path_added:
    gin.add_config_file_search_path(REPO_ROOT)
    _search_path_added = True


@contextlib.contextmanager
def config_errors_exit(program: str) -> Iterator[None]:
  """An entry point's body: a `GinConfigError` ends the program with its one
  line (`<program>: <error>`, exit status 1) instead of a traceback."""
  try:
    yield
  except GinConfigError as e:
    sys.exit(f'{program}: {e}')


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
  previous = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(previous)


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], *,
              defaults: Sequence[str] = (), finalize: bool = True,
              clear: bool = False) -> None:
  """Parses `defaults` (bindings), then the files, then `gin_bindings`.

  Args:
    gin_files: gin files, applied in order.
    gin_bindings: bindings applied after the files.
    defaults: bindings applied before the files (so the files override
      them), e.g. `cpd.configurables.DEFAULT_BINDINGS`.
    finalize: run gin's checks for unsatisfied `%gin.REQUIRED` macros and
      unknown references now (off where a tool reads a training run's files
      whose data macros only the trainer needs).
    clear: clear any gin config first.

  Raises:
    ValueError: naming a missing file, or the files and bindings of a config
      gin refuses, with gin's message.
  """
  files = []
  for path in gin_files:
    if tf.io.gfile.exists(path):
      # The caller's relative paths are relative to its working directory.
      files.append(path if '://' in path else os.path.abspath(path))
    elif tf.io.gfile.exists(os.path.join(REPO_ROOT, path)):
      files.append(os.path.join(REPO_ROOT, path))
    else:
      raise GinConfigError(f'--gin_file {path!r} does not exist')
  if clear:
    gin.clear_config()
  add_repository_search_path()
  # gin.parse_config_files_and_bindings, a phase at a time, so that an error
  # can be placed: defaults, files, bindings, finalize.
  phase, parsed = 'defaults', []
  try:
    # Gin resolves `include 'gin_configs/...'` against the working directory
    # first, and from elsewhere its package-path reader fails with a bare
    # TypeError on the `gin_configs` folder: parse from the repository root.
    with _working_directory(REPO_ROOT):
      if defaults:
        gin.parse_config(list(defaults))
      phase = 'files'
      for path in files:
        parsed.append(gin.parse_config_file(path))
      phase = 'bindings'
      gin.parse_config(list(gin_bindings))
      phase = 'finalize'
      if finalize:
        gin.finalize()
  except _CONFIG_ERRORS as e:
    raise GinConfigError(
        f'bad gin config (files {list(gin_files)}, bindings '
        f'{list(gin_bindings)}): '
        f'{_describe_error(e, phase, parsed, defaults, gin_bindings)}') from e


def _describe_error(error: BaseException, phase: str, parsed,
                    defaults: Sequence[str],
                    gin_bindings: Sequence[str]) -> str:
  """'<where>: <gin's message>', one line.

  Where: the gin file and line (then the files that include it), or the
  binding; left out only when it cannot be known.
  """
  def place(path: Optional[str], line: int, in_defaults: bool = False) -> str:
    if path is None:  # gin parsed a string of bindings, not a file.
      if in_defaults:
        return f'default binding {_binding_at(defaults, line)!r}'
      return f'binding {_binding_at(gin_bindings, line)!r}'
    return f'file {path!r}, line {line}'

  in_defaults = phase == 'defaults'

  text = str(error)
  found = list(_GIN_LOCATION.finditer(text))
  message = text[:found[0].start()] if found else text
  places = [place(m.group('file'), int(m.group('line')), in_defaults)
            for m in found]
  if found and isinstance(error, TypeError):
    # gin's package-path reader fails on a missing include with a bare
    # "expected str, ... not NoneType": name the file it looked for.
    missing = _missing_include(found[0].group('file'),
                               int(found[0].group('line')))
    if missing:
      message = (f'include {missing!r}: no such file (looked in the working '
                 f'directory and in {REPO_ROOT})')
  if isinstance(error, SyntaxError) and error.filename != '<tokenize>':
    # gin's parse errors carry their place (gin adds none to them).
    message = error.msg
    places = [place(error.filename, error.lineno or 1, in_defaults)]
  elif isinstance(error, (SyntaxError, tokenize.TokenError)):
    # The tokenizer's errors name no file: the parser that read it does.
    parser_place = _parser_place(error)
    if isinstance(error, SyntaxError):  # IndentationError: its own line.
      message = error.msg
      parser_place = parser_place and (parser_place[0], error.lineno)
    else:  # "('EOF in multi-line statement', (3, 0))"
      literal = re.fullmatch(r"\('(.*)', \(\d+, \d+\)\)", message)
      message = literal.group(1) if literal else message
    if parser_place:
      places.insert(0, place(*parser_place, in_defaults))
  elif phase == 'finalize':
    # gin checks macros and `%gin.REQUIRED` once all is parsed, and keeps no
    # places by then: find the statement in what was parsed.
    message = message.split(' in config string:')[0]
    where = _finalize_place(message, parsed, defaults, gin_bindings)
    if where:
      places = [place(*where)]
  message = re.sub(r'\s*\n\s*', ' ', message.strip())
  if not places:
    return message
  included = ''.join(f', included from {p}' for p in places[1:])
  return f'{places[0]}{included}: {message}'


def _missing_include(path: Optional[str], line: int) -> Optional[str]:
  """The file an `include` on `path`:`line` names, if it does not exist."""
  if not path:
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      text = f.read().splitlines()[line - 1]
  except (IndexError, OSError, tf.errors.OpError):
    return None
  named = re.match(r"\s*include\s+['\"]([^'\"]+)['\"]", text)
  if not named:
    return None
  target = named.group(1)
  if any(tf.io.gfile.exists(p) for p in (target, os.path.join(REPO_ROOT,
                                                             target))):
    return None
  return target


def _binding_at(bindings: Sequence[str], line: int) -> str:
  """The binding on `line` of `bindings` joined by newlines (as gin does)."""
  end = 0
  for binding in bindings:
    end += binding.count('\n') + 1
    if line <= end:
      return binding
  return ''


def _parser_place(error: BaseException) -> Optional[Tuple[Optional[str], int]]:
  """(file, line of the statement) of the gin parser `error` came through.

  One parser is reading when the tokenizer fails (an `include` is parsed
  between statements). gin's `ConfigParser` keeps its file in `_filename`
  (None for bindings) and `parse_statement` the statement's start in
  `stmt_loc` (gin-config 0.5); before a statement starts, the current token.
  """
  found = None
  tb = error.__traceback__
  while tb is not None:
    local = tb.tb_frame.f_locals
    parser = local.get('self')
    if isinstance(parser, config_parser.ConfigParser):
      token = getattr(parser, '_current_token', None)
      line = local['stmt_loc'].line_num if 'stmt_loc' in local else (
          token.start[0] if token else 1)
      found = (getattr(parser, '_filename', None), line)
      if 'stmt_loc' in local:
        return found
    tb = tb.tb_next
  return found


def _finalize_place(message: str, parsed, defaults: Sequence[str],
                    gin_bindings: Sequence[str]
                    ) -> Optional[Tuple[Optional[str], int, bool]]:
  """Where the statement behind a finalize error was last parsed, or None.

  (file, or None for a binding; line; whether in `defaults`). An unknown
  macro: its last use; an unsatisfied `%gin.REQUIRED`: its last declaration
  (the one in force).
  """
  unknown = re.match(r"No bindings specified for '(.+)/gin\.macro'", message)
  required = re.match(r'(\S+) set to `%gin\.REQUIRED`', message)
  if unknown:
    pattern = re.compile(r'%' + re.escape(unknown.group(1)) + r'\b')
  elif required:
    key = re.sub(r'/macro\.value$', '', required.group(1))
    pattern = re.compile(r'^\s*' + re.escape(key) + r'\s*=\s*%gin\.REQUIRED')
  else:
    return None
  last = None
  try:
    for path, line, text, in_defaults in _lines_in_parse_order(
        parsed, defaults, gin_bindings):
      if not text.lstrip().startswith('#') and pattern.search(text):
        last = (path, line, in_defaults)
  except (OSError, tf.errors.OpError):  # A file gone since: gin's message.
    return None
  return last


_INCLUDE = re.compile(r'\s*include\s')


def _lines_in_parse_order(parsed, defaults: Sequence[str],
                          gin_bindings: Sequence[str]):
  """(file or None for a binding, line, text, whether in `defaults`)."""
  for line, text in enumerate('\n'.join(defaults).splitlines(), 1):
    yield None, line, text, True

  def lines_of(result):
    path = result.filename
    if not os.path.isabs(path) and '://' not in path:
      path = os.path.join(REPO_ROOT, path)  # As gin resolved it.
    with tf.io.gfile.GFile(path) as f:
      text = f.read()
    includes = iter(result.includes)
    for line, content in enumerate(text.splitlines(), 1):
      yield path, line, content, False
      if _INCLUDE.match(content):
        nested = next(includes, None)
        if nested is not None:
          yield from lines_of(nested)

  for result in parsed:
    yield from lines_of(result)
  for line, text in enumerate('\n'.join(gin_bindings).splitlines(), 1):
    yield None, line, text, False


def write_operative_config(directory: str, name: str,
                           operative: bool = True) -> str:
  """Writes gin's config to `directory/name` (atomically); returns the path.

  With `operative` (jobs that call their configurables) it is gin's operative
  config: call it once the job has built what it runs, so it lists every
  parameter the job used. Tools that only read values (`gin.query_parameter`)
  write the whole parsed config (`operative=False`).
  """
  return atomic_files.record_run_config(
      directory, name,
      gin.operative_config_str() if operative else gin.config_str())
