"""SPL label spaces against a brute-force reference, plus their invariants."""

import itertools
import json

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
