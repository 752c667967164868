"""Finds the ops a TPU cannot run inside a step (`audit`, `check`).

Under a `TPUStrategy` the function given to `strategy.run` (the per-replica
step) is compiled by XLA into one TPU program with static shapes. An op
that has no TPU kernel, reads a string, calls back into Python or makes a
tensor whose shape depends on values fails there, often only when the job
reaches the TPU and with a message naming a generated node. This module
traces the step on any machine, walks every op of its graph and of every
function the graph calls (`tf.while_loop` / `tf.cond` bodies, nested
`tf.function`s, gradients: `While`, `If`, `StatelessWhile`, `StatelessIf`,
`Case`, `PartitionedCall`, `StatefulPartitionedCall`, ...), and names each
refused op with the line of this repository that created it (the innermost
frame of the op's creation traceback outside TensorFlow and the venv).

Audit the per-replica step, not the loop around it: fetching the next batch
(`IteratorGetNext`) is host work the loop does outside the TPU program, and
would be refused here.

    from spl import tpu_audit
    step = tf.function(lambda b: strategy.run(replica_step, args=(b,)))
    tpu_audit.check(step, batch)       # raises, naming every refused op
    findings = tpu_audit.audit(step, batch)     # or inspect them

`tests/test_xla.py` runs the steps of this repository with the replica
function XLA-compiled (`jit_compile=True`) and audits what was compiled.
The audit is stricter than XLA on CPU on purpose: XLA:CPU compiles some
data-dependent shapes (`Unique`, one-argument `Where`) that TPU programs
with static shapes cannot hold, and drops what it cannot see (asserts).

What is refused, and why, is `REFUSED_OP_TYPES` and `REFUSED_DTYPES` below
(the one list). Not refused:

* `Assert` (`tf.debugging.assert_*`) and the string constants that are only
  its message: XLA compiles `Assert` to nothing, so the check does not run on
  a TPU (the steps of this repository skip theirs under a `TPUStrategy`; the
  input pipeline checks labels and indices there).
* Stateful random ops: XLA compiles them, but draws other numbers than the
  TensorFlow kernels; steps that must agree with and without XLA use
  stateless ops (`cpd.memory_bank.NegativeSampler`).
* Collectives (`all_reduce`, `all_gather` of a replica context): the TPU's
  own.
"""

import dataclasses
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf

# Private, but the only way to get a graph (dtypes, consumers) back from a
# FunctionDef of the library; used only when the traced graphs are missing.
from tensorflow.python.framework import function_def_to_graph

# The repository: source locations are reported relative to it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- What is refused, and why ----

_PYTHON = ('calls back into the Python interpreter on the host '
           '(tf.py_function / tf.numpy_function): a TPU program cannot; '
           'write it with TensorFlow ops')
_DYNAMIC_SHAPE = ('output shape depends on the values (tf.where with one '
                  'argument, tf.boolean_mask, tf.unique, ...): XLA compiles '
                  'static shapes; use a fixed-size form (tf.where(c, x, y), '
                  'masks, padding)')
_PRINT = ('prints on the host (tf.print): not part of a TPU program; return '
          'the value from the step and print it outside')
_SUMMARY = ('writes a summary (host file I/O): not part of a TPU program; '
            'return the value from the step and write it outside')
_HOST_ONLY = ('host-only op (files, datasets / iterators, hash tables, image '
              'codecs, checkpoints): no TPU kernel; do it in the input '
              'pipeline or outside the step')

REFUSED_OP_TYPES: Dict[str, str] = {
    **dict.fromkeys(('PyFunc', 'PyFuncStateless', 'EagerPyFunc'), _PYTHON),
    **dict.fromkeys((
        'Where', 'Unique', 'UniqueV2', 'UniqueWithCounts',
        'UniqueWithCountsV2', 'ListDiff', 'DynamicPartition',
        'DenseToDenseSetOperation', 'DenseToSparseSetOperation',
        'SparseToSparseSetOperation', 'NonMaxSuppression',
        'NonMaxSuppressionV2', 'NonMaxSuppressionV3', 'RaggedRange'),
                    _DYNAMIC_SHAPE),
    **dict.fromkeys(('Print', 'PrintV2'), _PRINT),
    **dict.fromkeys((
        'WriteSummary', 'WriteScalarSummary', 'WriteHistogramSummary',
        'WriteImageSummary', 'WriteAudioSummary', 'WriteRawProtoSummary',
        'WriteGraphSummary', 'ScalarSummary', 'HistogramSummary',
        'ImageSummary', 'AudioSummary', 'AudioSummaryV2', 'TensorSummary',
        'TensorSummaryV2', 'MergeSummary', 'SummaryWriter',
        'CreateSummaryFileWriter', 'CreateSummaryDbWriter',
        'FlushSummaryWriter', 'CloseSummaryWriter'), _SUMMARY),
    **dict.fromkeys((
        'ReadFile', 'WriteFile', 'MatchingFiles', 'IteratorV2',
        'AnonymousIteratorV2', 'AnonymousIteratorV3', 'MakeIterator',
        'IteratorGetNext', 'IteratorGetNextSync', 'IteratorGetNextAsOptional',
        'HashTableV2', 'MutableHashTableV2', 'MutableHashTableOfTensorsV2',
        'MutableDenseHashTableV2', 'InitializeTableV2',
        'InitializeTableFromTextFileV2', 'LookupTableFindV2',
        'LookupTableInsertV2', 'LookupTableRemoveV2', 'LookupTableImportV2',
        'LookupTableExportV2', 'LookupTableSizeV2', 'DecodeJpeg',
        'DecodeAndCropJpeg', 'DecodePng', 'DecodeImage', 'EncodeJpeg',
        'EncodePng', 'SaveV2', 'RestoreV2', 'MergeV2Checkpoints'),
                    _HOST_ONLY),
}

REFUSED_DTYPES: Dict[tf.DType, str] = {
    tf.string: ('string tensor: TPUs have no string type; turn strings into '
                'numbers (ids, hashes, tokens) in the input pipeline'),
    tf.float64: 'float64 tensor: TPUs have no 64-bit floating point',
    tf.complex128: 'complex128 tensor: TPUs have no 64-bit floating point',
}

# Compiled to nothing by XLA (see the module docstring): allowed, and so are
# string constants that only feed them (their messages).
_DROPPED_BY_XLA = frozenset({'Assert'})

# Attributes naming the functions an op calls are found generically (every
# `func` / `list.func` attribute: While cond/body, If branches, Case
# branches, PartitionedCall f, ...), so new control-flow ops are walked too.


@dataclasses.dataclass(frozen=True)
class Finding:
  """One op a TPU cannot run.

  Attributes:
    op_type: e.g. 'EagerPyFunc'.
    op_name: the op's name in its graph.
    reason: why it is refused (from `REFUSED_OP_TYPES` / `REFUSED_DTYPES`).
    location: 'path:line (in function)' of the innermost frame of this
      repository that created the op (path relative to the repository);
      the innermost frame of any file when none is of the repository, and
      'unknown location' for a function rebuilt from its definition.
    function: the chain of (nested) functions holding the op, outermost
      first, e.g. '__inference_step_12 > while_body_6'.
  """
  op_type: str
  op_name: str
  reason: str
  location: str
  function: str

  def __str__(self):
    return (f'{self.location}: {self.op_type} {self.op_name!r} '
            f'[in {self.function}]: {self.reason}')


class TpuIncompatibleError(ValueError):
  """A step holds ops a TPU cannot run; `findings` lists them."""

  def __init__(self, message: str, findings: Sequence[Finding]):
    super().__init__(message)
    self.findings = list(findings)


# ---- Tracing and walking ----


def trace(fn, *args, **kwargs):
  """The ConcreteFunction of `fn` for these arguments.

  Args:
    fn: a `tf.function`, a ConcreteFunction (returned as is; no arguments
      then) or a plain Python callable (wrapped in `tf.function`).
    *args: the arguments of a call (tensors, specs or Python values).
    **kwargs: keyword arguments of a call.

  Returns:
    A ConcreteFunction.
  """
  if hasattr(fn, 'graph') and hasattr(fn, 'structured_input_signature'):
    if args or kwargs:
      raise ValueError('a ConcreteFunction is audited as traced: pass no '
                       'arguments')
    return fn
  if not hasattr(fn, 'get_concrete_function'):
    fn = tf.function(fn)
  return fn.get_concrete_function(*args, **kwargs)


def _called_functions(op) -> List[str]:
  """Names of the functions `op` calls (from its function-valued attrs)."""
  names = []
  for attr in op.node_def.attr.values():
    if attr.HasField('func'):
      names.append(attr.func.name)
    elif attr.HasField('list'):
      names.extend(f.name for f in attr.list.func)
  return [n for n in names if n]


class _Library:
  """Finds the graph of a called function by name.

  Functions a graph calls are registered in that graph (or an enclosing one)
  with the Python-built graph that keeps every op's creation traceback; that
  lookup is private TensorFlow API (`Graph._get_function`), so when it finds
  nothing the public function library of the traced graph
  (`as_graph_def().library`) rebuilds the graph from its definition: the
  ops are still all seen, without tracebacks.
  """

  def __init__(self, root: tf.Graph):
    self._root = root
    self._definitions = None

  def graph(self, name: str, caller: tf.Graph) -> Optional[tf.Graph]:
    g = caller
    while g is not None:
      fn = self._registered(g, name)
      if fn is not None:
        fn_graph = getattr(fn, 'graph', None)
        if fn_graph is not None:
          return fn_graph
      g = getattr(g, 'outer_graph', None)
    if self._definitions is None:
      self._definitions = {
          f.signature.name: f
          for f in self._root.as_graph_def().library.function}
    definition = self._definitions.get(name)
    if definition is None:
      return None
    rebuilt = function_def_to_graph.function_def_to_graph(definition)
    # Its ops' tracebacks are of this rebuilding, not of the step's code.
    rebuilt.tpu_audit_rebuilt = True
    return rebuilt

  @staticmethod
  def _registered(graph: tf.Graph, name: str):
    get = getattr(graph, '_get_function', None)
    try:
      return get(name) if get is not None else None
    except Exception:  # pylint: disable=broad-except
      return None


def walk_ops(graph: tf.Graph) -> Iterator[Tuple[Tuple[str, ...], Any]]:
  """Yields (function chain, op) for every op of `graph` and of every
  function it calls, at any depth (each function once).

  Raises:
    ValueError: a called function is found neither in the graphs nor in the
      function library (its ops could not be checked).
  """
  library = _Library(graph)
  seen = set()
  root_name = getattr(graph, 'name', None) or 'graph'

  def visit(g, chain):
    for op in g.get_operations():
      yield chain, op
      for name in _called_functions(op):
        if name in seen:
          continue
        seen.add(name)
        called = library.graph(name, g)
        if called is None:
          raise ValueError(f'function {name!r} called by {op.type} '
                           f'{op.name!r} is not in the function library: its '
                           'ops cannot be audited')
        yield from visit(called, chain + (name,))

  yield from visit(graph, (root_name,))


# ---- Source locations ----


def _excluded_prefixes() -> Tuple[str, ...]:
  prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                            os.path.dirname(tf.__file__))}
  prefixes.add(os.path.realpath(os.path.abspath(__file__)))
  return tuple(prefixes)


def source_location(op, source_root: str = REPO_ROOT) -> str:
  """'path:line (in function)' of the innermost frame under `source_root`.

  Frames of the installed packages (the venv, TensorFlow) and of this module
  are skipped. Without such a frame: the innermost frame of any file, or
  'unknown location' for an op without a traceback or of a function rebuilt
  from its definition.
  """
  if getattr(op.graph, 'tpu_audit_rebuilt', False):
    return 'unknown location (function rebuilt from its definition)'
  root = os.path.realpath(source_root)
  excluded = _excluded_prefixes()
  try:
    frames = list(op.traceback)
  except Exception:  # pylint: disable=broad-except
    frames = []
  for frame in reversed(frames):
    path = os.path.realpath(frame.filename)
    if (path.startswith(root + os.sep) and
        not path.startswith(excluded) and
        'site-packages' not in path and 'dist-packages' not in path):
      return (f'{os.path.relpath(path, root)}:{frame.lineno} '
              f'(in {frame.name})')
  if frames:
    frame = frames[-1]
    return (f'{frame.filename}:{frame.lineno} (in {frame.name}; no frame '
            'of this repository)')
  return 'unknown location (no traceback)'


# ---- The rules ----


def _refusal(op) -> Optional[str]:
  """Why `op` cannot run on a TPU, or None."""
  reason = REFUSED_OP_TYPES.get(op.type)
  if reason is not None:
    return reason
  if op.type in _DROPPED_BY_XLA:
    return None
  for tensor in list(op.outputs) + list(op.inputs):
    reason = REFUSED_DTYPES.get(tensor.dtype.base_dtype)
    if reason is None:
      continue
    if tensor.dtype.base_dtype == tf.string and op.type == 'Const' and all(
        c.type in _DROPPED_BY_XLA for c in tensor.consumers()):
      # An assert message, or a dead constant (pruned before compiling).
      continue
    return reason
  return None


def audit_graph(graph: tf.Graph, source_root: str = REPO_ROOT
                ) -> List[Finding]:
  """Every op of `graph` (nested functions included) a TPU cannot run.

  Args:
    graph: a traced graph, e.g. `concrete_function.graph`.
    source_root: locations are the innermost frames under this directory.

  Returns:
    Findings in graph order (outer graph first, then each called function).
  """
  findings = []
  for chain, op in walk_ops(graph):
    reason = _refusal(op)
    if reason is not None:
      findings.append(Finding(
          op_type=op.type, op_name=op.name, reason=reason,
          location=source_location(op, source_root),
          function=' > '.join(chain)))
  return findings


def audit(fn, *args, **kwargs) -> List[Finding]:
  """Traces `fn` with these arguments and returns what a TPU cannot run.

  Args:
    fn: the per-replica step: a `tf.function`, a ConcreteFunction (no
      arguments then) or a Python callable (traced with `tf.function`);
      trace it under the strategy (inside `strategy.run`) when it needs a
      replica context.
    *args: call arguments (tensors or `tf.TensorSpec`s and Python values).
    **kwargs: keyword call arguments.

  Returns:
    A list of `Finding`s, empty when the step is TPU-ready.
  """
  return audit_graph(trace(fn, *args, **kwargs).graph)


def format_findings(findings: Sequence[Finding], what: str = 'the step'
                    ) -> str:
  """A readable report: one line per finding, grouped by reason."""
  lines = [f'{len(findings)} op(s) in {what} cannot run on a TPU:']
  by_reason: Dict[str, List[Finding]] = {}
  for f in findings:
    by_reason.setdefault(f.reason, []).append(f)
  for reason, group in by_reason.items():
    lines.append(f'* {reason}:')
    lines.extend(f'    {f.location}: {f.op_type} {f.op_name!r} '
                 f'[in {f.function}]' for f in group)
  return '\n'.join(lines)


def check(fn, *args, **kwargs) -> None:
  """Like `audit`, but raises `TpuIncompatibleError` naming every finding.

  Raises:
    TpuIncompatibleError: (a ValueError) with one line per refused op: its
      source location, type, name, enclosing function, and why.
  """
  concrete = trace(fn, *args, **kwargs)
  findings = audit_graph(concrete.graph)
  if findings:
    raise TpuIncompatibleError(
        format_findings(findings, f'`{concrete.graph.name}`'), findings)
