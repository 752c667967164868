r"""The tools' command lines: strict absl flags, Beam options after `--`.

Every tool with flags here (`tfrecords_tools.write_clips`, `relabel`,
`holdout`, `inspect`, `cpd.title_tree`, `cpd.title_stats`) parses its
command line with `run`, so they all behave alike (WORKSPACE.md, "Command
lines"):

* `--help` (`-h`, `-?`, `--helpshort`) prints what the tool does, how to
  call it and its own flags with their help and defaults, and exits 0
  without running anything; `--helpfull` adds absl's logging flags.
* An unknown or misspelt flag, a bad value, a missing required flag or an
  unexpected argument is one line on stderr naming it, exit status 2, and
  nothing runs:

    relabel: error: Unknown command line flag 'src'. Did you mean: scr ?

* The Beam tools (write_clips, relabel, holdout) have `--runner`,
  `--direct_num_workers` and `--direct_running_mode` as flags of their own;
  any other Beam pipeline option goes after a `--` separator, where it is
  checked against the options Beam defines (a misspelt one is refused the
  same way, before anything runs):

    python -m tfrecords_tools.relabel --records=... --output_dir=... \
        --runner=DataflowRunner -- --project=P --region=R \
        --temp_location=gs://B/tmp

  Nothing else reaches Beam: the tools used to hand Beam whatever their
  own parser did not know, so a misspelt flag ran the job with defaults.
* `--flagfile=FILE` reads flags from a file; in it, a `--` line starts the
  Beam options. Each Beam tool writes the file that reruns it
  (`config_<tool>.flags`, `beam_utils.write_run_config`).
* Logs go to stderr in absl's format at INFO (absl's `--verbosity` /
  `--logger_levels` change that); Beam's own INFO messages are kept at
  WARNING (`--logger_levels=apache_beam:INFO` shows them).

Each run parses into a fresh `flags.FlagValues`, so a tool's flags exist only
while it runs (never on import) and a process may run several tools (tests).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import sys
import textwrap
from typing import Callable, Collection, List, Optional, Sequence, Tuple

from absl import flags

HELP_ARGS = ('-h', '-help', '--help', '-?', '-helpshort', '--helpshort')
HELPFULL_ARGS = ('-helpfull', '--helpfull')
BEAM_OPTIONS_SEPARATOR = '--'

_BEAM_HELP = """\
Beam pipeline options: after a `--` separator, e.g.
  ... --runner=DataflowRunner -- --project=P --region=R \\
      --temp_location=gs://B/tmp --setup_file=./setup.py --num_workers=200
  ... --runner=FlinkRunner -- --flink_master=HOST:8081 \\
      --environment_type=LOOPBACK
Options Beam does not define are refused; --runner, --direct_num_workers and
--direct_running_mode are this tool's flags (before `--`)."""


class UsageError(Exception):
  """A command line the tool refuses (one line: what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Tool:
  """A command-line tool.

  Attributes:
    name: the tool's name in messages (`relabel: error: ...`).
    command: how it is run, for the usage line.
    doc: its module docstring: the first paragraph and the first indented
      example (`python -m ...`) head the help.
    define_flags: defines the tool's own flags in the `FlagValues` given.
    required: flags that must have a value.
    beam: takes Beam pipeline options after `--` (and the Beam flags,
      `define_beam_flags`).
    positional: names of the positional arguments it requires, in order.
    more_positional: the last positional argument may repeat (`a.mp4 b.mp4`).
  """
  name: str
  command: str
  doc: str
  define_flags: Callable[[flags.FlagValues], None]
  required: Sequence[str] = ()
  beam: bool = False
  positional: Sequence[str] = ()
  more_positional: bool = False


@dataclasses.dataclass
class Args:
  """A parsed command line.

  Attributes:
    flags: the tool's flags (and absl's logging flags), parsed.
    positional: the positional arguments.
    beam_args: the Beam pipeline options given after `--`, checked.
    own_flags: the tool's own flag names, in definition order.
  """
  flags: flags.FlagValues
  positional: List[str]
  beam_args: List[str]
  own_flags: List[str]

  def beam_pipeline_args(self) -> List[str]:
    """`beam_args` plus `--direct_running_mode` when the flag was given."""
    mode = self.flags['direct_running_mode'].value
    return ([f'--direct_running_mode={mode}'] if mode else []) + list(
        self.beam_args)


def define_beam_flags(fv: flags.FlagValues, *, workers_help: str,
                      default_mode: str) -> None:
  """`--runner`, `--direct_num_workers`, `--direct_running_mode`."""
  flags.DEFINE_string('runner', 'DirectRunner',
                      'Beam runner (DirectRunner, DaskRunner, DataflowRunner, '
                      'FlinkRunner, SparkRunner, ...); its options go after '
                      '`--`.',
                      flag_values=fv)
  flags.DEFINE_integer('direct_num_workers', 1, workers_help, flag_values=fv)
  flags.DEFINE_enum('direct_running_mode', None,
                    ['multi_threading', 'multi_processing', 'in_memory'],
                    'DirectRunner workers as threads of this process or a '
                    f'Python process each (default: {default_mode}).',
                    flag_values=fv)


def run(tool: Tool, main: Callable[[Args], int],
        argv: Optional[Sequence[str]] = None) -> int:
  """Parses `argv` (default `sys.argv`) for `tool` and runs `main`.

  Returns:
    The exit status: 0 after `--help`, 2 for a refused command line (one
    line on stderr), else what `main` returns.
  """
  argv = list(sys.argv if argv is None else argv)
  try:
    args = parse(tool, argv)
  except HelpRequested as e:
    print(e.text)
    return 0
  except UsageError as e:
    print(f'{tool.name}: error: {e}', file=sys.stderr)
    return 2
  _set_up_logging(args.flags)
  return main(args)


class HelpRequested(Exception):
  """`--help` was given: `text` is what to print."""

  def __init__(self, text: str):
    super().__init__(text)
    self.text = text


def parse(tool: Tool, argv: Sequence[str]) -> Args:
  """The parsed command line.

  Raises:
    UsageError: what is wrong with it (one line).
    HelpRequested: help was asked for (the text to print).
  """
  fv = flags.FlagValues()
  tool.define_flags(fv)
  own = list(fv)
  logging_flags = _add_absl_logging_flags(fv)
  args = list(argv[1:])
  beam_args: List[str] = []
  if tool.beam:
    args, beam_args = _split(args)
    args, from_files = _expand_flagfiles(fv, args)
    beam_args = from_files + beam_args
  # Help is asked for before any `--` (a non-Beam tool's `--` ends its
  # flags, as in absl).
  words, _ = _split(args)
  if any(a in HELPFULL_ARGS for a in words):
    raise HelpRequested(help_text(tool, fv, own, logging_flags))
  if any(a in HELP_ARGS for a in words):
    raise HelpRequested(help_text(tool, fv, own))
  try:
    rest = fv([argv[0] if argv else tool.name] + args)
  except flags.Error as e:
    raise UsageError(_one_line(e)) from None
  positional = rest[1:]
  missing = [f'--{n}' for n in tool.required if fv[n].value is None]
  if missing:
    verb = 'is' if len(missing) == 1 else 'are'
    raise UsageError(f'{", ".join(missing)} {verb} required (--help lists '
                     'the flags)')
  if len(positional) > len(tool.positional) and not tool.more_positional:
    extra = positional[len(tool.positional)]
    hint = (' (Beam options go after `--`)' if tool.beam else '')
    raise UsageError(f'unexpected argument {extra!r}{hint}')
  if len(positional) < len(tool.positional):
    raise UsageError(f'{tool.positional[len(positional)]} is required: '
                     f'{tool.command} {" ".join(tool.positional)} [flags]')
  if tool.beam:
    check_beam_options(beam_args, own)
  return Args(flags=fv, positional=positional, beam_args=beam_args,
              own_flags=own)


def _split(args: Sequence[str]) -> Tuple[List[str], List[str]]:
  if BEAM_OPTIONS_SEPARATOR in args:
    i = list(args).index(BEAM_OPTIONS_SEPARATOR)
    return list(args[:i]), list(args[i + 1:])
  return list(args), []


def _expand_flagfiles(fv: flags.FlagValues,
                      args: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Expands `--flagfile`s; a `--` line in one starts Beam options."""
  own: List[str] = []
  beam: List[str] = []
  i = 0
  while i < len(args):
    arg = args[i]
    name = arg.lstrip('-').split('=', 1)[0]
    if arg.startswith('-') and name == 'flagfile':
      directive = [arg]
      if '=' not in arg and i + 1 < len(args):
        directive.append(args[i + 1])
        i += 1
      try:
        lines = fv.read_flags_from_files(directive, force_gnu=True)
      except flags.Error as e:
        raise UsageError(_one_line(e)) from None
      mine, theirs = _split(lines)
      own += mine
      beam += theirs
    else:
      own.append(arg)
    i += 1
  return own, beam


def check_beam_options(args: Sequence[str], own_flags: Collection[str]) -> None:
  """Refuses Beam options Beam does not define, and the tool's own flags.

  Raises:
    UsageError: naming the first such argument.
  """
  if not args:
    return
  # pylint: disable=g-import-not-at-top,protected-access
  from apache_beam.options import pipeline_options as beam_options
  if any(a.startswith('--dask_') for a in args):
    # Beam's Dask runner module defines its options (the `dask` extra);
    # without the extra they stay unknown and are refused below.
    try:
      importlib.import_module('apache_beam.runners.dask.dask_runner')
    except ImportError:
      pass

  class _Parser(beam_options._BeamArgumentParser):

    def error(self, message):
      raise UsageError(f'Beam options after `--`: {message}')

  parser = _Parser(allow_abbrev=False)
  # As `PipelineOptions.get_all_options` collects them.
  classes = {str(c): c for c in beam_options.PipelineOptions.__subclasses__()}
  for cls in classes.values():
    cls._add_argparse_args(parser)
  # pylint: enable=g-import-not-at-top,protected-access
  for arg in args:
    name = arg.lstrip('-').split('=', 1)[0]
    if arg.startswith('--') and name in own_flags:
      raise UsageError(f'--{name} is a flag of this tool: give it before `--`')
  _, unknown = parser.parse_known_args(list(args))
  if unknown:
    first = unknown[0]
    if not first.startswith('-'):
      raise UsageError(f'unexpected argument {first!r} after `--` (Beam '
                       'options are --name=value)')
    name = first.split('=', 1)[0]
    known = [o for a in parser._actions  # pylint: disable=protected-access
             for o in a.option_strings]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f'. Did you mean: {close[0]} ?' if close else ''
    raise UsageError(f'unknown Beam pipeline option {name} after `--`{hint}')


def _one_line(error: Exception) -> str:
  return ' '.join(str(error).split())


# ---- Help ----


def _doc_head(doc: str) -> List[str]:
  """The docstring's first paragraph and its first example command.

  The example is the first indented paragraph with a `python -m` line.
  """
  paragraphs = [p for p in (doc or '').strip('\n').split('\n\n') if p.strip()]
  if not paragraphs:
    return []
  head = [' '.join(paragraphs[0].split())]
  for paragraph in paragraphs[1:]:
    lines = paragraph.splitlines()
    if all(line.startswith(' ') for line in lines) and any(
        line.strip().startswith('python -m') for line in lines):
      return head + [''] + lines
  return head


def _default_text(flag) -> str:
  value = flag.default
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (list, tuple)):
    return ','.join(str(v) for v in value)
  return str(value)


def _flag_lines(flag, required: bool) -> List[str]:
  name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
  text = f'{name}: {flag.help}'
  if required:
    text += ' (required)'
  elif flag.default is not None:
    text += f' (default: {_default_text(flag)})'
  return textwrap.wrap(text, width=80, initial_indent='  ',
                       subsequent_indent='      ', break_on_hyphens=False)


def help_text(tool: Tool, fv: flags.FlagValues, own: Sequence[str],
              logging_flags: Sequence[str] = ()) -> str:
  """The `--help` text: summary, usage, the tool's flags (+ logging's)."""
  usage = [tool.command] + [f'--{n}=...' for n in tool.required] + list(
      tool.positional) + (['...'] if tool.more_positional else []) + [
          '[flags]']
  if tool.beam:
    usage.append('[-- BEAM_OPTIONS]')
  lines = ['usage: ' + ' '.join(usage), ''] + _doc_head(tool.doc)
  lines += ['', 'flags:']
  for name in own:
    lines += _flag_lines(fv[name], name in tool.required)
  lines += textwrap.wrap(
      '--flagfile: read flags from a file, one per line' +
      (' (a `--` line starts the Beam options)' if tool.beam else ''),
      width=80, initial_indent='  ', subsequent_indent='      ')
  if tool.beam:
    lines += [''] + _BEAM_HELP.splitlines()
  if logging_flags:
    lines += ['', 'logging flags (absl):']
    for name in logging_flags:
      lines += _flag_lines(fv[name], False)
  else:
    lines += ['', '--helpfull also lists the logging flags (absl).']
  module = tool.command.split()[-1]
  lines += [f'More: python -m pydoc {module}']
  return '\n'.join(lines)


# ---- Logging ----


def _add_absl_logging_flags(fv: flags.FlagValues) -> List[str]:
  """absl's logging flags (`-v`, `--logger_levels`, ...) in `fv` too."""
  importlib.import_module('absl.logging')  # Defines them.
  names = []
  for flag in flags.FLAGS.get_flags_for_module('absl.logging'):
    if flag.name not in fv:
      fv[flag.name] = flag
      names.append(flag.name)
  return names


def _set_up_logging(fv: flags.FlagValues) -> None:
  """absl's handler at INFO, as `app.run` would; Beam's INFO kept quiet."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  # absl's handler warns once unless the global flags count as parsed; the
  # logging flags are the same objects in `fv`, parsed just now.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  absl_logging.use_absl_handler()
  if fv['verbosity'].using_default_value:
    fv['verbosity'].value = 0  # INFO, as `app.run` does.
  if 'apache_beam' not in (fv['logger_levels'].value or {}):
    logging.getLogger('apache_beam').setLevel(logging.WARNING)
