"""SPL label spaces against a brute-force reference, plus their invariants."""

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tfrecords_tools import label_space_plots
from tfrecords_tools import label_spaces as ls

DROP = ls.DROP


# ---- Brute-force reference: loops over cells, no numpy tricks ----


def ref_selected(c, k):
  n = len(c)
  off = [(-int(c[w][t]), w * n + t) for w in range(n) for t in range(n)
         if w != t]
  top = [cell for _, cell in sorted(off)[:(k - 1) * n]]
  return sorted([w * n + w for w in range(n)] + top)


def ref_table(variant, c, k=None):
  n = len(c)
  table = [[None] * n for _ in range(n)]
  if variant in ('spl_m', 'spl_d'):
    sel = ref_selected(c, k)
    ids = {cell: i for i, cell in enumerate(sel)}
  for w, t in itertools.product(range(n), range(n)):
    if variant == 'spl':
      v = n * w + t
    elif variant == 'spl_b':
      v = 2 * w + (0 if w == t else 1)
    elif variant == 'weak':
      v = w
    elif variant == 'teacher':
      v = t
    elif variant == 'agreement':
      v = w if w == t else DROP
    elif variant == 'spl_m':
      v = ids.get(w * n + t, ids[w * n + w])
    else:
      v = ids.get(w * n + t, DROP)
    table[w][t] = v
  return table


def ref_scr(c, cells):
  n = len(c)
  total = sum(sum(int(x) for x in row) for row in c)
  covered = sum(int(c[cell // n][cell % n]) for cell in set(cells))
  return covered / total if total else 0.0


def ref_k_for_scr(c, target):
  n = len(c)
  for k in range(1, n + 1):
    total = int(np.sum(c))
    covered = sum(int(c[x // n][x % n]) for x in ref_selected(c, k))
    if covered >= target * total:
      return k
  return n


def _matrices():
  rng = np.random.RandomState(0)
  cases = {}
  for i in range(4):
    n = rng.randint(2, 7)
    cases[f'random_{i}'] = rng.poisson(rng.uniform(0.5, 5), (n, n))
  cases['ties'] = np.full((4, 4), 3)
  ties = np.ones((5, 5), np.int64)
  ties[0, 3] = ties[2, 1] = 2
  cases['partial_ties'] = ties
  empty_row = rng.poisson(3, (4, 4))
  empty_row[1] = 0
  cases['empty_row'] = empty_row
  never_predicted = rng.poisson(3, (4, 4))
  never_predicted[:, 2] = 0
  cases['teacher_never_predicts'] = never_predicted
  cases['n1'] = np.array([[7]])
  cases['n1_empty'] = np.array([[0]])
  sparse = np.zeros((5, 5), np.int64)
  sparse[0, 1], sparse[3, 2], sparse[4, 4] = 5, 2, 1
  cases['fewer_nonempty_than_k'] = sparse
  cases['all_zero'] = np.zeros((3, 3), np.int64)
  cases['diagonal_only'] = np.diag([3, 1, 4])
  return cases


MATRICES = _matrices()


def _variant_cases():
  for name, c in MATRICES.items():
    n = len(c)
    for variant in ls.VARIANTS:
      if variant in ls.K_VARIANTS:
        for k in range(1, n + 1):
          yield name, variant, k
      else:
        yield name, variant, None


@pytest.mark.parametrize('name,variant,k', list(_variant_cases()))
def test_variant_table_matches_brute_force(name, variant, k):
  c = MATRICES[name]
  table = ls.variant_table(variant, c, k)
  assert table.dtype == np.int64
  assert table.tolist() == ref_table(variant, c, k)
  used = set(table[table != DROP].tolist())
  # Ids are exactly 0..num_classes-1: every class exists, even empty ones
  # (N = 1 has no off-diagonal cell: its spl_b "disagrees" class is cell-less).
  expected = set(range(ls.num_output_classes(variant, len(c), k)))
  if variant == 'spl_b' and len(c) == 1:
    expected = {0}
  assert used == expected


@pytest.mark.parametrize('name', list(MATRICES))
def test_scr_and_k_for_scr_match_brute_force(name):
  c = MATRICES[name]
  n = len(c)
  curve = ls.scr_curve(c)
  for k in range(1, n + 1):
    assert curve[k - 1] == pytest.approx(ref_scr(c, ref_selected(c, k)))
  # SCR is monotone in K and reaches 1 at K = N (0 when there are no clips).
  assert all(a <= b for a, b in zip(curve, curve[1:]))
  assert curve[-1] == (1.0 if c.sum() else 0.0)
  for target in (0.01, 0.3, 0.5, 0.75, 0.9, 0.999, 1.0):
    assert ls.k_for_scr(c, target) == ref_k_for_scr(c, target)


@pytest.mark.parametrize('name', list(MATRICES))
def test_invariants(name):
  c = MATRICES[name]
  n = len(c)
  for k in range(1, n + 1):
    cells = ls.selected_cells(c, k)
    assert len(cells) == k * n == len(set(cells.tolist()))
    for variant in ('spl_m', 'spl_d'):
      table = ls.variant_table(variant, c, k)
      # Diagonal always kept, each weak label its own class.
      diag = table[np.arange(n), np.arange(n)]
      assert (diag != DROP).all() and len(set(diag.tolist())) == n
    d = ls.variant_table('spl_d', c, k).reshape(-1)
    # SPL-D drops exactly the unselected cells.
    assert set(np.flatnonzero(d == DROP).tolist()) == (
        set(range(n * n)) - set(cells.tolist()))
    m = ls.variant_table('spl_m', c, k)
    for w, t in itertools.product(range(n), range(n)):
      if (w * n + t) not in cells:
        assert m[w, t] == m[w, w]
  # K = N is the full SPL space, ids included.
  np.testing.assert_array_equal(ls.variant_table('spl_m', c, n),
                                ls.variant_table('spl', c))
  np.testing.assert_array_equal(ls.variant_table('spl_d', c, n),
                                ls.variant_table('spl', c))


def test_confusion_matrix_and_noise_ratio():
  c = ls.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 0, 2, 2], 3)
  assert c.dtype == np.int64
  assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
  assert ls.noise_ratio(c) == pytest.approx(2 / 6)
  assert ls.noise_ratio(np.zeros((2, 2), np.int64)) == 0.0
  assert ls.confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
  with pytest.raises(ValueError, match='teacher'):
    ls.confusion_matrix([0], [3], 3)
  with pytest.raises(ValueError, match='same length'):
    ls.confusion_matrix([0, 1], [0], 3)


def test_ties_broken_by_cell_id():
  c = np.ones((3, 3), np.int64)
  # All off-diagonal cells tie: cell order 1, 2, 3, 5, 6, 7.
  assert ls.off_diagonal_ranking(c).tolist() == [1, 2, 3, 5, 6, 7]
  c[2, 0] = 5
  assert ls.off_diagonal_ranking(c).tolist() == [6, 1, 2, 3, 5, 7]


def test_arguments_are_validated():
  c = np.ones((3, 3), np.int64)
  with pytest.raises(ValueError, match='`k`'):
    ls.variant_table('spl_m', c, 4)
  with pytest.raises(ValueError, match='`k`'):
    ls.variant_table('spl_m', c, 0)
  with pytest.raises(ValueError, match='`k` is required'):
    ls.variant_table('spl_d', c)
  with pytest.raises(ValueError, match='only applies'):
    ls.variant_table('spl', c, 2)
  with pytest.raises(ValueError, match='`variant`'):
    ls.variant_table('nope', c)
  with pytest.raises(ValueError, match='`target_scr`'):
    ls.k_for_scr(c, 0.0)
  with pytest.raises(ValueError, match='square'):
    ls.variant_table('spl', np.ones((2, 3), np.int64))
  with pytest.raises(ValueError, match='exactly one'):
    ls.make_label_space('spl_m', c, ['a', 'b', 'c'], k=2, target_scr=0.5)
  with pytest.raises(ValueError, match='`names`'):
    ls.make_label_space('spl', c, ['a', 'b'])


def test_label_space_document():
  c = np.array([[5, 2, 0], [0, 3, 1], [4, 0, 1]], np.int64)
  names = ['baking cookies', 'scrambling eggs', 'surfing']
  space = ls.make_label_space('spl_d', c, names, target_scr=0.7)
  assert space['k'] == 2 and space['num_classes'] == 6
  assert space['scr'] == pytest.approx(ref_scr(c, ref_selected(c, 2)))
  assert space['noise_ratio'] == pytest.approx(7 / 16)
  assert space['num_dropped_clips'] == 16 - round(space['scr'] * 16)
  by_name = {x['name']: x for x in space['classes']}
  cls = by_name['weak: baking cookies / teacher: scrambling eggs']
  assert cls['cells'] == [['baking cookies', 'scrambling eggs']]
  assert cls['num_clips'] == 2 and not cls['in_diagonal']
  assert sum(x['num_clips'] for x in space['classes']) == (
      space['num_clips'] - space['num_dropped_clips'])
  assert space['id'].startswith('spl_d-') and len(space['id']) == 18
  # Stable id: same mapping -> same id, even with other counts.
  assert ls.make_label_space('spl_d', c, names, k=2)['id'] == space['id']
  assert ls.make_label_space('spl_d', c, names, k=3)['id'] != space['id']
  same_mapping = ls.make_label_space('spl', c * 3, names)
  assert same_mapping['id'] == ls.make_label_space('spl', c, names)['id']
  assert ls.make_label_space('spl', c, ['a', 'b', 'c'])['id'] != (
      same_mapping['id'])

  m = ls.make_label_space('spl_m', c, names, k=2)
  diag0 = m['classes'][m['table'][0][0]]
  # The merged cell (baking cookies, surfing) is listed under its diagonal.
  assert ['baking cookies', 'surfing'] in diag0['cells']
  assert diag0['name'] == 'weak: baking cookies / teacher: baking cookies'
  assert diag0['in_diagonal']
  # Row 1's merged cell (scrambling eggs, baking cookies) comes BEFORE its
  # diagonal cell: the class is still named after the diagonal. Every class
  # is named after its diagonal cell if it has one, else its only cell.
  diag1 = m['classes'][m['table'][1][1]]
  assert ['scrambling eggs', 'baking cookies'] in diag1['cells']
  assert diag1['name'] == 'weak: scrambling eggs / teacher: scrambling eggs'
  for cls in m['classes']:
    own = [cell for cell in cls['cells'] if cell[0] == cell[1]] or cls['cells']
    assert len(own) == 1
    assert cls['name'] == f'weak: {own[0][0]} / teacher: {own[0][1]}'
  b = ls.make_label_space('spl_b', c, names)
  assert [x['name'] for x in b['classes']][:2] == [
      'weak: baking cookies / teacher agrees',
      'weak: baking cookies / teacher disagrees']
  assert b['classes'][1]['num_clips'] == 2 and b['scr'] == 1.0
  a = ls.make_label_space('agreement', c, names)
  assert a['scr'] == pytest.approx(9 / 16) and a['num_dropped_clips'] == 7


def test_load_and_check_ids(tmp_path):
  c = np.array([[2, 1], [0, 3]], np.int64)
  space = ls.make_label_space('spl', c, ['x', 'y'])
  path = tmp_path / 'label_space.json'
  path.write_text(ls.label_space_json(space), encoding='utf-8')
  loaded = ls.load_label_space(str(path))
  assert loaded == space
  assert ls.check_label_space_ids(loaded, [space['id'], space['id'].encode()]) == 2
  with pytest.raises(ValueError, match=r'2 of 3 records.*not relabelled'):
    ls.check_label_space_ids(loaded, [space['id'], 'spl-000000000000', None])
  tampered = dict(space, table=[[0, 1], [3, 3]])
  path.write_text(json.dumps(tampered), encoding='utf-8')
  with pytest.raises(ValueError, match='does not match its content'):
    ls.load_label_space(str(path))
  path.write_text('{"id": 1}', encoding='utf-8')
  with pytest.raises(ValueError, match='missing keys'):
    ls.load_label_space(str(path))


def test_plots_are_png_and_deterministic():
  c = np.array([[5, 2, 0], [0, 3, 1], [4, 0, 0]], np.int64)
  space = ls.make_label_space('spl_m', c, ['a', 'b', 'c'], target_scr=0.8)
  pngs = [
      label_space_plots.confusion_matrix_png(c, ['a', 'b', 'c']),
      label_space_plots.class_counts_png(space),
      label_space_plots.scr_curve_png(ls.scr_curve(c), space['k'], 0.8),
  ]
  for png in pngs:
    assert png.startswith(b'\x89PNG') and len(png) > 1000
  assert label_space_plots.class_counts_png(space) == pngs[1]
  # Degenerate inputs still draw.
  empty = np.zeros((1, 1), np.int64)
  assert label_space_plots.confusion_matrix_png(empty, ['a'])
  assert label_space_plots.class_counts_png(
      ls.make_label_space('spl', empty, ['a']))


# ---- Sizing by class count (Figure 4: 400 / 1600 / 4500 classes) ----


def ref_selected_by_count(c, count):
  """Diagonal + the top `count` - N off-diagonal cells, by sorting them all."""
  n = len(c)
  off = sorted((-int(c[w][t]), w * n + t) for w in range(n) for t in range(n)
               if w != t)
  return sorted([w * n + w for w in range(n)] +
                [cell for _, cell in off[:count - n]])


def ref_k_variant_table(variant, n, selected):
  ids = {cell: i for i, cell in enumerate(sorted(selected))}
  table = [[DROP] * n for _ in range(n)]
  for w, t in itertools.product(range(n), range(n)):
    if w * n + t in ids:
      table[w][t] = ids[w * n + t]
    elif variant == 'spl_m':
      table[w][t] = ids[w * n + w]
  return table


def ref_noise_ratio(c):
  n = len(c)
  total = sum(int(c[w][t]) for w in range(n) for t in range(n))
  off = sum(int(c[w][t]) for w in range(n) for t in range(n) if w != t)
  return off / total if total else 0.0


def _names(n):
  return [f'class_{i}' for i in range(n)]


@pytest.mark.parametrize('name', list(MATRICES))
def test_class_count_sizing_matches_brute_force(name):
  c = MATRICES[name]
  n = len(c)
  by_count = ls.scr_by_num_classes(c)
  assert len(by_count) == n * n - n + 1
  # Every count from N (diagonal only) to N^2 (the full space), multiples of
  # N or not.
  for count in range(n, n * n + 1):
    ref = ref_selected_by_count(c, count)
    assert ls.selected_cells(c, num_classes=count).tolist() == ref
    assert by_count[count - n] == pytest.approx(ref_scr(c, ref))
    for variant in ls.K_VARIANTS:
      space = ls.make_label_space(variant, c, _names(n), num_classes=count)
      assert space['num_classes'] == len(space['classes']) == count
      assert space['sized_by'] == 'num_classes'
      assert space['table'] == ref_k_variant_table(variant, n, ref)
      assert space['scr'] == pytest.approx(ref_scr(c, ref))
      assert space['k'] == pytest.approx(count / n)
      assert space['target_scr'] is None
      ls.validate_label_space(space)
      if count % n == 0:
        # The same selection as K = count / N: same table, same id.
        by_k = ls.make_label_space(variant, c, _names(n), k=count // n)
        assert type(space['k']) is int  # pylint: disable=unidiomatic-typecheck
        assert by_k['sized_by'] == 'k'
        assert {**by_k, 'sized_by': 'num_classes'} == space


def test_fractional_k_like_figure_4():
  # N = 4 and 10 classes is K = 2.5, as 4500 classes for N = 200 is 22.5.
  rng = np.random.RandomState(1)
  c = rng.poisson(4, (4, 4))
  c[np.arange(4), np.arange(4)] += 10
  names = ['a', 'b', 'c', 'd']
  space = ls.make_label_space('spl_d', c, names, num_classes=10)
  assert space['k'] == 2.5 and space['num_classes'] == 10
  ref = ref_selected_by_count(c, 10)
  assert space['scr'] == pytest.approx(ref_scr(c, ref))
  assert space['num_dropped_clips'] == int(c.sum()) - sum(
      int(c.reshape(-1)[x]) for x in ref)
  # Between K = 2 and K = 3 in both size and SCR; a stable id of its own.
  k2, k3 = (ls.make_label_space('spl_d', c, names, k=k) for k in (2, 3))
  assert k2['scr'] <= space['scr'] <= k3['scr']
  assert len({k2['id'], k3['id'], space['id']}) == 3
  assert ls.make_label_space('spl_d', c * 2, names,
                             num_classes=10)['id'] == space['id']
  assert ls.parse_label_space(ls.label_space_json(space)) == space
  # The paper's own sizes at N = 200: exact counts, SCR from the definition.
  big = np.random.RandomState(2).zipf(1.6, (200, 200)).clip(max=10**6)
  for count in (400, 1600, 4500):
    cells = ls.selected_cells(big, num_classes=count)
    assert cells.size == len(set(cells.tolist())) == count
    ref = ref_selected_by_count(big, count)
    assert cells.tolist() == ref
    assert ls.scr_by_num_classes(big)[count - 200] == pytest.approx(
        ref_scr(big, ref))


def test_class_count_refusals():
  c = np.ones((3, 3), np.int64)
  names = ['a', 'b', 'c']
  for bad in (2, 10, 0):
    with pytest.raises(ValueError, match=r'`num_classes` must be in .*\[3, 9\]'):
      ls.make_label_space('spl_m', c, names, num_classes=bad)
    with pytest.raises(ValueError, match='`num_classes`'):
      ls.check_sizing('spl_d', 3, num_classes=bad)
  for bad in (4.5, True, '6'):
    with pytest.raises(ValueError, match='`num_classes` must be an integer'):
      ls.make_label_space('spl_d', c, names, num_classes=bad)
  for kw in (dict(k=2, num_classes=6), dict(target_scr=0.5, num_classes=6),
             dict(k=2, target_scr=0.5), dict(k=2, target_scr=0.5,
                                             num_classes=6), {}):
    with pytest.raises(ValueError, match='exactly one of `k`, `target_scr` '
                       'and `num_classes`'):
      ls.make_label_space('spl_m', c, names, **kw)
  with pytest.raises(ValueError, match='only apply'):
    ls.make_label_space('spl_b', c, names, num_classes=6)
  with pytest.raises(ValueError, match='only applies'):
    ls.variant_table('weak', c, num_classes=3)
  with pytest.raises(ValueError, match='exactly one of `k` and `num_classes`'):
    ls.selected_cells(c, 2, num_classes=6)
  assert ls.check_sizing('spl_m', 3, num_classes=3) == 'num_classes'
  assert ls.check_sizing('spl_m', 3, target_scr=0.3) == 'scr'
  assert ls.check_sizing('spl_d', 3, k=3) == 'k'
  assert ls.check_sizing('agreement', 3) is None


@pytest.mark.parametrize('name', list(MATRICES))
def test_noise_ratio_is_table_2_definition_for_every_variant(name):
  c = MATRICES[name]
  expected = ref_noise_ratio(c)
  assert ls.noise_ratio(c) == pytest.approx(expected)
  for variant in ls.VARIANTS:
    kw = {'k': 1} if variant in ls.K_VARIANTS else {}
    space = ls.make_label_space(variant, c, _names(len(c)), **kw)
    assert space['noise_ratio'] == pytest.approx(expected)


# ---- Checking a label space against an experiment ----


def test_check_expected_label_space():
  c = np.array([[9, 3, 0, 1], [2, 8, 4, 0], [0, 1, 7, 5], [3, 0, 2, 6]])
  names = ['a', 'b', 'c', 'd']
  space = ls.parse_label_space(ls.label_space_json(
      ls.make_label_space('spl_m', c, names, num_classes=10)))
  src = '/ws/label_spaces/fig4/label_space.json'
  check = ls.check_expected_label_space
  check(space, source=src)
  check(space, source=src, variant='spl_m', num_classes=10, k=2.5,
        scr=space['scr'])
  # Sized by a count: `scr` is compared to the SCR reached, within the
  # tolerance.
  check(space, source=src, scr=space['scr'] + 0.004)
  check(space, source=src, scr=space['scr'] - 0.02, scr_tolerance=0.03)
  for kw, field in ((dict(variant='spl_d'), '`variant`'),
                    (dict(num_classes=16), '`num_classes`'),
                    (dict(k=2), '`k`'),
                    (dict(k=3), '`k`'),
                    (dict(scr=space['scr'] - 0.01), '`scr`')):
    with pytest.raises(ValueError) as e:
      check(space, source=src, **kw)
    message = str(e.value)
    assert message.startswith(src + ':') and field in message
    assert space['id'] in message
  # All mismatches in one message.
  with pytest.raises(ValueError, match='`variant`.*`num_classes`.*`k`'):
    check(space, source=src, variant='spl_d', num_classes=8, k=2)

  # Sized by a target SCR: `scr` is compared to the target, not the SCR
  # reached (which the smallest K may overshoot).
  by_scr = ls.make_label_space('spl_d', c, names, target_scr=0.6)
  assert by_scr['scr'] - 0.6 > ls.SCR_TOLERANCE  # the case that matters
  check(by_scr, source=src, variant='spl_d', scr=0.6, k=by_scr['k'],
        num_classes=4 * by_scr['k'])
  with pytest.raises(ValueError, match=r'`target_scr` is 0\.6 \(sized by scr'):
    check(by_scr, source=src, scr=by_scr['scr'])
  # A space written before `sized_by` existed: inferred from `target_scr`.
  legacy = {k: v for k, v in by_scr.items() if k != 'sized_by'}
  assert ls.label_space_sized_by(legacy) == 'scr'
  check(legacy, source=src, scr=0.6)
  legacy_k = dict(ls.make_label_space('spl_m', c, names, k=2))
  del legacy_k['sized_by']
  assert ls.label_space_sized_by(legacy_k) == 'k'
  # A fixed-size variant: no K; its SCR is the one reached.
  spl = ls.make_label_space('spl', c, names)
  check(spl, source=src, variant='spl', num_classes=16, scr=1.0)
  with pytest.raises(ValueError, match='`k` is None'):
    check(spl, source=src, k=4)

  for kw, arg in ((dict(variant='nope'), '`variant`'),
                  (dict(num_classes=0), '`num_classes`'),
                  (dict(k=0), '`k`'), (dict(scr=1.5), '`scr`'),
                  (dict(scr_tolerance=-1), '`scr_tolerance`')):
    with pytest.raises(ValueError, match=arg):
      check(space, source=src, **kw)
  with pytest.raises(ValueError, match='`source`'):
    check(space, source='')


def test_sized_by_is_validated():
  c = np.ones((2, 2), np.int64)
  space = ls.make_label_space('spl_m', c, ['x', 'y'], num_classes=3)
  with pytest.raises(ValueError, match='sized_by'):
    ls.parse_label_space(ls.label_space_json(dict(space, sized_by='K')))


def test_scr_plot_marks_every_way_of_sizing():
  c = np.array([[5, 2, 0, 1], [0, 3, 1, 2], [4, 0, 0, 1], [1, 1, 1, 6]])
  names = ['a', 'b', 'c', 'd']
  curve, by_count = ls.scr_curve(c), ls.scr_by_num_classes(c)
  plain = label_space_plots.scr_curve_png(curve, scr_by_count=by_count)
  pngs = set()
  for kw in (dict(k=2), dict(target_scr=0.7), dict(num_classes=10)):
    space = ls.make_label_space('spl_m', c, names, **kw)
    png = label_space_plots.scr_curve_png(
        curve, space['k'], space['target_scr'], chosen_scr=space['scr'],
        scr_by_count=by_count)
    assert png.startswith(b'\x89PNG') and png != plain
    pngs.add(png)
  assert len(pngs) == 3
  # A fractional K finds its SCR on the per-count curve.
  assert label_space_plots.scr_curve_png(curve, 2.5, scr_by_count=by_count) == (
      label_space_plots.scr_curve_png(curve, 2.5, chosen_scr=by_count[6],
                                      scr_by_count=by_count))
  with pytest.raises(ValueError, match='`chosen_scr`'):
    label_space_plots.scr_curve_png(curve, 2.5)
  with pytest.raises(ValueError, match='`scr_by_count`'):
    label_space_plots.scr_curve_png(curve, 2, scr_by_count=by_count[:-1])
  with pytest.raises(ValueError, match='`chosen_k`'):
    label_space_plots.scr_curve_png(curve, 4.5, chosen_scr=1.0)


# ---- Input checks and boundaries (mutation testing found them open) ----


def test_confusion_matrix_label_checks_at_their_boundaries():
  """A label outside [0, N) must be refused, not counted in another cell."""
  # N = 1 is a valid (if trivial) class list; N = 0 is not.
  assert ls.confusion_matrix([0, 0], [0, 0], 1).tolist() == [[2]]
  with pytest.raises(ValueError, match='`num_classes` must be >= 1'):
    ls.confusion_matrix([], [], 0)
  # 0 and N - 1 are labels; -1 and N are not, in either argument (teacher
  # N with weak 0 would otherwise land silently in cell (1, 0)).
  assert ls.confusion_matrix([0, 2], [2, 0], 3).tolist() == [
      [0, 0, 1], [0, 0, 0], [1, 0, 0]]
  for weak, teacher, name in (([-1], [2], 'weak'), ([3], [0], 'weak'),
                              ([1], [-1], 'teacher'), ([0], [3], 'teacher')):
    with pytest.raises(ValueError, match=f'`{name}` labels must be in'):
      ls.confusion_matrix(weak, teacher, 3)
  # Labels of any shape ([B, 1] batches) are flattened.
  c = ls.confusion_matrix(np.array([[0], [1], [1]]), np.array([[1], [1], [0]]),
                          2)
  assert c.tolist() == [[0, 1], [1, 1]]
  # Compact label dtypes: w * N + t must not overflow uint8 (19 * 20 > 255).
  weak = np.array([19, 19, 0, 13], np.uint8)
  teacher = np.array([19, 2, 0, 12], np.uint8)
  c = ls.confusion_matrix(weak, teacher, 20)
  expected = np.zeros((20, 20), np.int64)
  for w, t in zip(weak.tolist(), teacher.tolist()):
    expected[w, t] += 1
  np.testing.assert_array_equal(c, expected)


def test_confusion_argument_checks():
  """Only non-empty square integer matrices of counts >= 0 are confusions."""
  for bad in (np.ones(4, np.int64), np.ones((2, 2, 2), np.int64),
              np.zeros((0, 0), np.int64), np.ones((2, 3), np.int64)):
    with pytest.raises(ValueError, match='non-empty square'):
      ls.noise_ratio(bad)
  with pytest.raises(ValueError, match='integer counts'):
    ls.noise_ratio(np.ones((2, 2)))
  with pytest.raises(ValueError, match='>= 0'):
    ls.scr(np.array([[1, -1], [0, 1]]), [0])
  # Unsigned counts rank like signed ones (negating them would wrap around
  # and put the empty cells first).
  c = np.array([[0, 0, 3], [1, 2, 0], [0, 5, 0]])
  for dtype in (np.uint8, np.uint32, np.uint64, np.int32):
    assert ls.off_diagonal_ranking(c.astype(dtype)).tolist() == [7, 2, 3, 1, 5,
                                                                 6]
    np.testing.assert_array_equal(
        ls.variant_table('spl_d', c.astype(dtype), 2),
        ls.variant_table('spl_d', c, 2))


def test_scr_counts_each_cell_once_and_is_zero_without_clips():
  """SCR is a ratio of clips: a cell listed twice is still covered once."""
  c = np.array([[3, 1], [2, 4]], np.int64)
  assert ls.scr(c, [0, 0, 3, 3]) == 7 / 10
  assert ls.scr(c, iter([1])) == 1 / 10
  assert ls.scr(c, []) == 0.0
  assert ls.scr(np.zeros((2, 2), np.int64), [0, 1, 2, 3]) == 0.0
  assert ls.scr_by_num_classes(np.zeros((2, 2), np.int64)) == [0.0] * 3
  assert ls.scr_curve(np.zeros((2, 2), np.int64)) == [0.0, 0.0]


def test_k_and_num_classes_must_be_plain_integers():
  """bool / float K or class count is refused; numpy integers are fine."""
  c = np.ones((3, 3), np.int64)
  for bad in (True, False, 2.0, '2', None):
    with pytest.raises(ValueError, match='`k` must be an integer'):
      ls.num_output_classes('spl_m', 3, bad)
  for bad in (True, 4.0):
    with pytest.raises(ValueError, match='`k` must be an integer'):
      ls.check_sizing('spl_d', 3, k=bad)
    with pytest.raises(ValueError, match='`num_classes` must be an integer'):
      ls.check_sizing('spl_d', 3, num_classes=bad)
  assert ls.check_sizing('spl_m', 3, k=np.int64(2)) == 'k'
  assert ls.check_sizing('spl_m', 3, num_classes=np.int32(9)) == 'num_classes'
  assert ls.selected_cells(c, np.int64(1)).tolist() == [0, 4, 8]
  for k in (0, 4, -1):
    with pytest.raises(ValueError, match=r'`k` must be in \[1, N=3\]'):
      ls.check_sizing('spl_m', 3, k=k)
  assert ls.check_sizing('spl_m', 3, k=1) == 'k'
  assert ls.check_sizing('spl_m', 3, k=3) == 'k'
  assert ls.check_sizing('spl_m', 3, num_classes=9) == 'num_classes'


def test_check_sizing_refusals():
  """Each variant takes exactly the sizing arguments it can use."""
  with pytest.raises(ValueError, match='`variant` must be one of'):
    ls.check_sizing('spl_x', 3)
  for kw in (dict(k=1), dict(target_scr=0.5), dict(num_classes=3)):
    for variant in ('spl', 'spl_b', 'weak', 'teacher', 'agreement'):
      with pytest.raises(ValueError, match='only apply'):
        ls.check_sizing(variant, 3, **kw)
  for variant in ls.K_VARIANTS:
    with pytest.raises(ValueError, match='exactly one'):
      ls.check_sizing(variant, 3)
  for bad in (0.0, -0.1, 1.01):
    with pytest.raises(ValueError, match='`target_scr` must be in'):
      ls.check_sizing('spl_m', 3, target_scr=bad)
    with pytest.raises(ValueError, match='`target_scr` must be in'):
      ls.k_for_scr(np.ones((3, 3), np.int64), bad)
  assert ls.check_sizing('spl_d', 3, target_scr=1.0) == 'scr'
  assert ls.check_sizing('spl_d', 3, target_scr=1e-9) == 'scr'


def test_variant_table_sizing_arguments():
  """K variants need a size, given as K or as a class count; others none."""
  c = np.array([[4, 1, 0], [2, 5, 3], [0, 1, 6]], np.int64)
  for variant in ls.K_VARIANTS:
    with pytest.raises(ValueError, match='`k` is required'):
      ls.variant_table(variant, c)
    np.testing.assert_array_equal(ls.variant_table(variant, c, 2),
                                  ls.variant_table(variant, c, num_classes=6))
  for variant in ('spl', 'spl_b', 'weak', 'teacher', 'agreement'):
    with pytest.raises(ValueError, match='`num_classes` only applies'):
      ls.variant_table(variant, c, num_classes=3)
    with pytest.raises(ValueError, match='`k` only applies'):
      ls.variant_table(variant, c, 1)
  with pytest.raises(ValueError, match='`variant` must be one of'):
    ls.variant_table('nope', c)


def test_num_output_classes():
  """The documented size of every variant over N classes."""
  for n in (1, 3, 4):
    assert ls.num_output_classes('spl', n) == n * n
    assert ls.num_output_classes('spl_b', n) == 2 * n
    for variant in ('weak', 'teacher', 'agreement'):
      assert ls.num_output_classes(variant, n) == n
    for k in range(1, n + 1):
      for variant in ls.K_VARIANTS:
        assert ls.num_output_classes(variant, n, k) == k * n
  with pytest.raises(ValueError, match=r'`k` must be in \[1, N=3\]'):
    ls.num_output_classes('spl_m', 3, 4)
  with pytest.raises(ValueError, match=r'`k` must be in \[1, N=3\]'):
    ls.num_output_classes('spl_d', 3, 0)
  with pytest.raises(ValueError, match='`variant` must be one of'):
    ls.num_output_classes('spl_x', 3)


# ---- Class names and the per-class entries of the document ----


def test_class_names_of_every_variant():
  """One name per class id: its own cell, its row's diagonal, or the input."""
  c = np.array([[5, 2, 0], [1, 3, 4], [0, 0, 6]], np.int64)
  names = ['a', 'b', 'c']

  def cell(w, t):
    return f'weak: {names[w]} / teacher: {names[t]}'

  assert ls.class_names('spl', ls.variant_table('spl', c), names) == [
      cell(w, t) for w in range(3) for t in range(3)]
  for variant in ('weak', 'teacher', 'agreement'):
    assert ls.class_names(variant, ls.variant_table(variant, c),
                          names) == names
  assert ls.class_names('spl_b', ls.variant_table('spl_b', c), names) == [
      f'weak: {x} / teacher {y}' for x in names for y in ('agrees',
                                                          'disagrees')]
  # K = 2 keeps the off-diagonal cells 5 (b, c), 1 (a, b), 3 (b, a): classes
  # in cell order 0, 1, 3, 4, 5, 8; the merged (SPL-M) or dropped (SPL-D)
  # cells name nothing, even (b, a) before its row's diagonal.
  expected = [cell(0, 0), cell(0, 1), cell(1, 0), cell(1, 1), cell(1, 2),
              cell(2, 2)]
  for variant in ls.K_VARIANTS:
    table = ls.variant_table(variant, c, 2)
    assert ls.class_names(variant, table, names) == expected
  # No classes, no names.
  assert ls.class_names('spl', np.zeros((0, 0), np.int64), []) == []


def test_in_diagonal_flags_every_class_holding_a_diagonal_cell():
  """`in_diagonal` is whether a class holds some (w, w) cell, for every w."""
  c = np.array([[5, 2, 0, 1], [1, 3, 4, 0], [0, 0, 6, 2], [3, 0, 0, 1]])
  names = ['a', 'b', 'c', 'd']
  for variant, kw in (('spl', {}), ('spl_m', dict(k=2)), ('spl_d', dict(k=2)),
                      ('spl_b', {}), ('agreement', {}), ('teacher', {})):
    space = ls.make_label_space(variant, c, names, **kw)
    flags = [x['in_diagonal'] for x in space['classes']]
    assert flags == [any(w == t for w, t in x['cells'])
                     for x in space['classes']]
    assert sum(flags) == 4
    # Every class's cells are exactly the table entries holding its id.
    for x in space['classes']:
      assert x['cells'] == [[names[w], names[t]] for w in range(4)
                            for t in range(4)
                            if space['table'][w][t] == x['index']]
  spl = ls.make_label_space('spl', c, names)
  assert [x['index'] for x in spl['classes'] if x['in_diagonal']] == [
      0, 5, 10, 15]


def test_names_must_be_unique_and_become_strings():
  """Duplicate names are refused; non-str names are stored as str."""
  c = np.ones((3, 3), np.int64)
  with pytest.raises(ValueError, match='`names` must be unique'):
    ls.make_label_space('spl', c, ['a', 'b', 'a'])
  space = ls.make_label_space('weak', c, [7, 8, 9])
  assert space['input_classes'] == ['7', '8', '9']
  assert [x['name'] for x in space['classes']] == ['7', '8', '9']
  assert ls.parse_label_space(ls.label_space_json(space)) == space


# ---- The id, the JSON text, validation and loading ----


def _doc_matrix():
  return np.array([[5, 2, 0], [1, 3, 4], [0, 0, 6]], np.int64)


def test_label_space_id_is_the_documented_hash():
  """Pins the id's recipe: records and files written earlier carry it.

  The id is `<variant>-` + the first 12 hex digits of the SHA-256 of the
  canonical JSON (sorted keys, no spaces, UTF-8, not ASCII-escaped) of the
  format version, variant, K, input class names, output class names and
  table. Renaming a hashed key or changing the encoding would orphan every
  relabelled record on disk.
  """
  names = ['café', 'ölçek', 'b']  # non-ASCII: hashed as UTF-8
  c = _doc_matrix()
  for variant, kw in (('spl', {}), ('spl_m', dict(k=2)),
                      ('spl_d', dict(num_classes=5)), ('weak', {})):
    space = ls.make_label_space(variant, c, names, **kw)
    key = {'format_version': 1, 'variant': variant, 'k': space['k'],
           'input_classes': names,
           'classes': [x['name'] for x in space['classes']],
           'table': space['table']}
    text = json.dumps(key, sort_keys=True, separators=(',', ':'),
                      ensure_ascii=False)
    digest = hashlib.sha256(text.encode('utf-8')).hexdigest()
    assert space['id'] == f'{variant}-{digest[:12]}'
    assert ls.label_space_id(space) == space['id']
    # numpy tables (before `tolist`) hash like their JSON lists.
    assert ls.label_space_id(dict(space, table=np.asarray(
        space['table']))) == space['id']


def test_label_space_id_covers_exactly_the_mapping():
  """Any field defining the mapping changes the id; statistics do not."""
  c = _doc_matrix()
  space = ls.make_label_space('spl_m', c, ['a', 'b', 'c'], k=2)
  ident = ls.label_space_id(space)
  table = [row[:] for row in space['table']]
  table[0][2] = table[0][1]
  renamed = [dict(x) for x in space['classes']]
  renamed[1]['name'] = 'other'
  for changed in (dict(format_version=2), dict(variant='spl_d'), dict(k=3),
                  dict(k=2.0 + 1e-9), dict(input_classes=['a', 'b', 'd']),
                  dict(classes=renamed), dict(table=table)):
    assert ls.label_space_id(dict(space, **changed)) != ident, changed
  assert ls.label_space_id(dict(space, variant='spl_d')).startswith('spl_d-')
  for same in (dict(num_clips=1), dict(scr=0.1), dict(noise_ratio=0.9),
               dict(num_dropped_clips=7), dict(target_scr=0.5),
               dict(sized_by='scr'), dict(num_classes=5), dict(id='x'),
               dict(num_input_classes=9),
               dict(classes=[dict(x, num_clips=0, cells=[], in_diagonal=False)
                             for x in space['classes']])):
    assert ls.label_space_id(dict(space, **same)) == ident, same


def test_label_space_json_is_canonical():
  """Same document, same bytes: key order does not matter; names readable."""
  space = ls.make_label_space('spl_b', _doc_matrix(), ['café', 'b', 'c'])
  text = ls.label_space_json(space)
  reordered = dict(reversed(list(space.items())))
  assert ls.label_space_json(reordered) == text
  assert text.endswith('}\n') and 'café' in text
  assert json.loads(text) == space
  # One key per line, indented.
  assert '\n "classes": [' in text and '\n "variant": "spl_b"' in text


def _with_id(space, **changes):
  """`space` edited and its id recomputed: only the edit is wrong."""
  out = dict(space, **changes)
  out['id'] = ls.label_space_id(out)
  return out


def test_validate_label_space_refuses_every_inconsistency():
  """Each consistency check fires alone, even when the id matches."""
  space = ls.make_label_space('spl_d', _doc_matrix(), ['a', 'b', 'c'], k=2)
  ls.validate_label_space(space)
  for key in ('format_version', 'id', 'variant', 'num_input_classes',
              'num_classes', 'k', 'input_classes', 'classes', 'table'):
    with pytest.raises(ValueError, match=f"missing keys \\['{key}'\\]"):
      ls.validate_label_space({k: v for k, v in space.items() if k != key})
  # Optional keys (statistics, `sized_by` of older files) may be missing.
  optional = {k: v for k, v in space.items()
              if k in ('format_version', 'id', 'variant', 'num_input_classes',
                       'num_classes', 'k', 'input_classes', 'classes',
                       'table')}
  ls.validate_label_space(optional)
  with pytest.raises(ValueError, match=r'format_version 2 is newer than this '
                     r'code reads \(1\): update the code'):
    ls.validate_label_space(_with_id(space, format_version=2))
  for bad in (0, '1', None, True):
    with pytest.raises(ValueError, match='format_version must be 1, got'):
      ls.validate_label_space(_with_id(space, format_version=bad))
  with pytest.raises(ValueError, match='table must be 3x3'):
    ls.validate_label_space(_with_id(space, table=space['table'][:2]))
  with pytest.raises(ValueError, match='table must be 2x2'):
    ls.validate_label_space(_with_id(space, num_input_classes=2))
  with pytest.raises(ValueError, match='lists 5 classes, num_classes is 6'):
    ls.validate_label_space(_with_id(space, classes=space['classes'][:5]))
  for bad in (-2, 6):
    table = [row[:] for row in space['table']]
    table[2][0] = bad
    with pytest.raises(ValueError, match=r'values must be in \[-1, 6\)'):
      ls.validate_label_space(_with_id(space, table=table))
  # -1 (drop) and num_classes - 1 are in range.
  table = [row[:] for row in space['table']]
  table[2][0], table[0][0] = DROP, 5
  ls.validate_label_space(_with_id(space, table=table))
  for sized_by in (None,) + ls.SIZED_BY:
    ls.validate_label_space(_with_id(space, sized_by=sized_by))
  for bad in ('K', '', 0):
    with pytest.raises(ValueError, match='sized_by must be one of'):
      ls.validate_label_space(_with_id(space, sized_by=bad))
  with pytest.raises(ValueError, match='does not match its content'):
    ls.validate_label_space(dict(space, k=3))


def test_parse_label_space_names_its_source():
  """Errors say which file is bad; valid text gives the document back."""
  space = ls.make_label_space('agreement', _doc_matrix(), ['a', 'b', 'c'])
  assert ls.parse_label_space(ls.label_space_json(space), 'x.json') == space
  with pytest.raises(ValueError, match=r'^gs://b/label_space\.json: not valid '
                     'JSON'):
    ls.parse_label_space('{"id": ', source='gs://b/label_space.json')
  with pytest.raises(ValueError, match=r'^<string>: not valid JSON'):
    ls.parse_label_space('nope')
  with pytest.raises(ValueError, match=r'^f\.json: label space is missing'):
    ls.parse_label_space('{}', source='f.json')
  with pytest.raises(ValueError, match=r'^<string>: label space id'):
    ls.parse_label_space(ls.label_space_json(dict(space, variant='weak')))


def test_load_label_space_reads_utf8(tmp_path):
  """The file is UTF-8 whatever the locale; errors name the path."""
  space = ls.make_label_space('weak', _doc_matrix(), ['café', 'b', 'c'])
  path = tmp_path / 'label_space.json'
  path.write_bytes(ls.label_space_json(space).encode('utf-8'))
  assert ls.load_label_space(str(path)) == space
  # Under a non-UTF-8 locale (here ASCII) too.
  env = dict(os.environ, LC_ALL='C', PYTHONUTF8='0', PYTHONCOERCECLOCALE='0')
  code = ('import sys; from tfrecords_tools import label_spaces; '
          'space = label_spaces.load_label_space(sys.argv[1]); '
          'assert space["input_classes"][0] == "caf\\xe9", space')
  subprocess.run([sys.executable, '-c', code, str(path)], env=env, check=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(
                     __file__))), capture_output=True)
  path.write_bytes(b'[')
  with pytest.raises(ValueError,
                     match='^' + re.escape(str(path)) + ': not valid JSON'):
    ls.load_label_space(str(path))


def test_a_newer_format_version_is_refused_naming_the_file_and_versions(
    tmp_path):
  """A label_space.json of a newer relabel job is refused by the loader the
  trainer uses, before any of its fields is trusted."""
  space = ls.make_label_space('spl_b', _doc_matrix(), ['a', 'b', 'c'])
  newer = _with_id(space, format_version=ls.LABEL_SPACE_FORMAT_VERSION + 1)
  path = tmp_path / 'label_space.json'
  path.write_text(ls.label_space_json(newer), encoding='utf-8')
  with pytest.raises(ValueError) as e:
    ls.load_label_space(str(path))
  assert str(e.value) == (
      f'{path}: label space format_version 2 is newer than this code reads '
      f'(1): update the code, or relabel with this version')


def test_check_label_space_ids_counts_and_names_foreign_ids():
  """Returns how many records were checked; names each foreign id."""
  space = ls.make_label_space('spl', _doc_matrix(), ['a', 'b', 'c'])
  ident = space['id']
  assert ls.check_label_space_ids(space, iter([ident] * 3 +
                                              [ident.encode()])) == 4
  assert ls.check_label_space_ids(space, []) == 0
  with pytest.raises(ValueError) as e:
    ls.check_label_space_ids(space, [b'spl-1', ident, 'spl-1', '', None,
                                     'spl-0', b'\xff'])
  message = str(e.value)
  assert message.startswith(f'6 of 7 records have a label space id other '
                            f'than {ident!r}: ')
  assert message.endswith(
      "'spl-0' x1, 'spl-1' x2, '\ufffd' x1, <none: record not relabelled> x2")


def test_label_space_sized_by_of_older_files():
  """Files without `sized_by`: fixed variants None, K variants k or scr."""
  c = _doc_matrix()
  for variant in ('spl', 'spl_b', 'weak', 'teacher', 'agreement'):
    space = ls.make_label_space(variant, c, ['a', 'b', 'c'])
    assert ls.label_space_sized_by(space) is None
    del space['sized_by']
    assert ls.label_space_sized_by(space) is None
  space = ls.make_label_space('spl_d', c, ['a', 'b', 'c'], num_classes=4)
  assert ls.label_space_sized_by(space) == 'num_classes'
  del space['sized_by']
  assert ls.label_space_sized_by(space) == 'k'
  assert ls.label_space_sized_by(dict(space, target_scr=0.5)) == 'scr'


def test_check_expected_label_space_boundaries():
  """Tolerances and argument checks at their edges."""
  c = np.array([[9, 3, 0, 1], [2, 8, 4, 0], [0, 1, 7, 5], [3, 0, 2, 6]])
  names = ['a', 'b', 'c', 'd']
  space = ls.make_label_space('spl_m', c, names, k=2)
  check = ls.check_expected_label_space
  # An SCR exactly at the tolerance passes; exactly equal with zero
  # tolerance passes.
  check(space, source='s', scr=space['scr'], scr_tolerance=0.0)
  check(space, source='s', scr=1.0, scr_tolerance=1.0 - space['scr'])
  with pytest.raises(ValueError, match='`scr` is'):
    check(space, source='s', scr=1.0, scr_tolerance=0.99 - space['scr'])
  with pytest.raises(ValueError, match='`scr` is'):
    check(space, source='s', scr=space['scr'] - 1e-6, scr_tolerance=0.0)
  # K is compared up to round-off relative to its size.
  check(dict(space, k=1000.0), source='s', k=1000.0 + 5e-7)
  check(dict(space, k=2.5), source='s', k=2.5 + 2e-9)
  with pytest.raises(ValueError, match='`k` is 1000.0, expected'):
    check(dict(space, k=1000.0), source='s', k=1000.0 + 5e-6)
  with pytest.raises(ValueError, match='`k` is 2.5, expected'):
    check(dict(space, k=2.5), source='s', k=2.5 + 5e-9)
  # A space without a `k` (or a stored null) never matches an expected K.
  with pytest.raises(ValueError, match='`k` is None'):
    check({k: v for k, v in space.items() if k != 'k'}, source='s', k=2)
  # A space without an SCR: the expected one cannot be checked.
  with pytest.raises(ValueError, match=r'`scr` is None \(sized by k\)'):
    check({k: v for k, v in space.items() if k != 'scr'}, source='s',
          scr=0.5)
  spl = ls.make_label_space('spl', c, names)
  with pytest.raises(ValueError, match=r'`scr` is 1.0 \(spl has a fixed '
                     r'size\), expected 0.5 \+- 0.005'):
    check(spl, source='s', scr=0.5)
  # Argument checks: integers >= 1, K > 0, SCR in (0, 1], tolerance >= 0.
  check(space, source='s', num_classes=np.int64(8), k=np.int64(2), scr=None,
        scr_tolerance=0)
  for bad in (True, 8.0, -8):
    with pytest.raises(ValueError, match='`num_classes` must be an integer'):
      check(space, source='s', num_classes=bad)
  with pytest.raises(ValueError, match='`num_classes` is 8, expected 1'):
    check(space, source='s', num_classes=1)
  for bad in (0, -1):
    with pytest.raises(ValueError, match='`k` must be > 0'):
      check(space, source='s', k=bad)
  # K <= 1 (a fraction of N classes cannot happen, but 1 can) is compared
  # with the absolute tolerance 1e-9.
  check(dict(space, k=1), source='s', k=1)
  # Exactly the tolerance apart (1e-9, exact in binary here) still matches.
  check(dict(space, k=2e-9), source='s', k=1e-9)
  check(dict(space, k=0.5), source='s', k=0.5 + 0.9e-9)
  with pytest.raises(ValueError, match='`k` is 1, expected'):
    check(dict(space, k=1), source='s', k=1 + 1.5e-9)
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match='`scr` must be in'):
      check(space, source='s', scr=bad)
  with pytest.raises(ValueError, match='`scr_tolerance` must be >= 0'):
    check(spl, source='s', scr=1.0, scr_tolerance=-1e-12)
  check(spl, source='s', scr=1.0, variant='spl', num_classes=16)
  with pytest.raises(ValueError, match='`variant` must be one of'):
    check(space, source='s', variant='SPL_M')
  with pytest.raises(ValueError, match=r"^s: label space 'spl_m-.*`variant` "
                     r"is 'spl_m', expected 'spl_d'; `num_classes` is 8, "
                     r"expected 12$"):
    check(space, source='s', variant='spl_d', num_classes=12)


def test_relabel_lookup_is_the_table():
  """The lookup is the document's table as int64 [N, N]."""
  space = ls.make_label_space('spl_d', _doc_matrix(), ['a', 'b', 'c'], k=1)
  lookup = ls.relabel_lookup(space)
  assert lookup.dtype == np.int64 and lookup.shape == (3, 3)
  assert lookup.tolist() == space['table']
  # int64 whatever the table was built as (lookups index with it).
  narrow = dict(space, table=np.asarray(space['table'], np.int8))
  assert ls.relabel_lookup(narrow).dtype == np.int64
