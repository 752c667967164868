"""The demo's report: each row's accuracy with intervals beside the paper's.

Pure Python on the per-video scores the demo collects (`spl.demo`), so the
report can be rebuilt from `results.json` and tested without training:

* every accuracy with its 95% bootstrap interval over videos (and seeds,
  with several), every difference from the reference row (weak label for
  SPL, cross-pair for CPD) with its paired interval (`spl.bootstrap`);
* the paper's number beside each row, in its own column that says which
  table and dataset it comes from: the scales are not comparable, only the
  directions are;
* for every ordering the paper reports, whether it held here: HELD (the
  paired interval is on the paper's side of 0), REVERSED (on the other
  side), NOT RESOLVED (it contains 0); for rows the paper calls comparable,
  CONSISTENT (contains 0) or DIFFERS.

Paper numbers are transcribed from the papers' tables (`TABLES.md` of the
papers' folder: SPL Table 1 and 2, CPD Table 1a and 1b).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from spl import bootstrap


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """What a paper reports for a row."""
  top1: Optional[float]  # Top-1 %, None when the extraction has no number.
  source: str  # Where the number is.
  reference_top1: Optional[float] = None  # The reference row in that table.
  # Direction against the reference the paper reports: +1, -1, 0 (its text
  # calls them comparable), None (no claim).
  sign: Optional[int] = None


SPL_PAPER_SCALE = 'Kinetics-200 top-1, 6.7x10^5 web clips, R3D-50-G'
CPD_PAPER_SCALE = ('UCF101 split 1 top-1 after fine-tuning, Kinetics-210k, '
                   'R3D-34')

# SPL Table 1 (WebK200-147K-V, 6.7x10^5 clips, fine-tuned on Kinetics-200);
# SPL-M / SPL-D are not in Table 1: Table 2 (147K-V, ~1.4x10^6 clips) has
# them with its own weak-label row (83.9), Figure 4 only says both stay
# below SPL-B.
SPL_PAPER = {
    'none': PaperRow(80.6, 'Table 1, ImageNet pre-train', 82.8, -1),
    'weak': PaperRow(82.8, 'Table 1', 82.8, None),
    'teacher': PaperRow(81.9, 'Table 1', 82.8, -1),
    'agreement': PaperRow(82.9, 'Table 1; text: "comparable"', 82.8, 0),
    'data_params': PaperRow(83.2, 'Table 1', 82.8, 1),
    'spl_b': PaperRow(84.3, 'Table 1', 82.8, 1),
    'spl_m': PaperRow(84.5, 'Table 2, 1.4x10^6 clips', 83.9, 1),
    'spl_d': PaperRow(84.6, 'Table 2, 1.4x10^6 clips', 83.9, 1),
}
# CPD Table 1a (objective, text not fine-tuned) and 1b (training strategy);
# both fine-tune on UCF101 split 1. Cross-pair is Table 1b's "curriculum
# stage I" (82.2 in both).
CPD_PAPER = {
    'cpd_none': PaperRow(50.0, 'Table 1a/1b, random init', 82.2, -1),
    'cross_pair': PaperRow(82.2, 'Table 1a = 1b stage I', 82.2, None),
    'ranking': PaperRow(79.9, 'Table 1a', 82.2, -1),
    'self_instance': PaperRow(51.1, 'Table 1a', 82.2, -1),
    'direct': PaperRow(81.3, 'Table 1b', 82.2, -1),
    'curriculum': PaperRow(84.2, 'Table 1b, stage II', 82.2, 1),
}


@dataclasses.dataclass(frozen=True)
class Claim:
  """An ordering the paper reports: `better` above `worse` (or comparable)."""
  better: str
  worse: str
  sign: int  # +1: better > worse; 0: comparable.
  paper: str  # The paper's numbers, as text.


SPL_CLAIMS = (
    Claim('spl_b', 'weak', 1, 'Table 1: 84.3 vs 82.8'),
    Claim('weak', 'teacher', 1, 'Table 1: 82.8 vs 81.9'),
    Claim('teacher', 'none', 1, 'Table 1: 81.9 vs 80.6'),
    Claim('weak', 'none', 1, 'Table 1: 82.8 vs 80.6'),
    Claim('agreement', 'none', 1, 'Table 1: 82.9 vs 80.6'),
    Claim('data_params', 'none', 1, 'Table 1: 83.2 vs 80.6'),
    Claim('spl_b', 'none', 1, 'Table 1: 84.3 vs 80.6'),
    Claim('spl_b', 'data_params', 1, 'Table 1: 84.3 vs 83.2'),
    Claim('agreement', 'weak', 0, 'Table 1: 82.9 vs 82.8, "comparable"'),
    Claim('spl_b', 'spl_m', 1, 'Table 2: 84.9 vs 84.5; Fig. 4: below SPL-B'),
    Claim('spl_b', 'spl_d', 1, 'Table 2: 84.9 vs 84.6; Fig. 4: below SPL-B'),
    Claim('spl_m', 'weak', 1, 'Table 2: 84.5 vs 83.9'),
    Claim('spl_d', 'weak', 1, 'Table 2: 84.6 vs 83.9'),
)
CPD_CLAIMS = (
    Claim('cross_pair', 'ranking', 1, 'Table 1a: 82.2 vs 79.9'),
    Claim('ranking', 'self_instance', 1, 'Table 1a: 79.9 vs 51.1'),
    Claim('cross_pair', 'self_instance', 1, 'Table 1a: 82.2 vs 51.1'),
    Claim('self_instance', 'cpd_none', 0,
          'Table 1a: 51.1 vs 50.0, "almost no contribution"'),
    Claim('cross_pair', 'cpd_none', 1, 'Table 1a: 82.2 vs 50.0'),
    Claim('curriculum', 'cross_pair', 1, 'Table 1b: 84.2 vs 82.2 (stage II '
          'vs I)'),
    Claim('cross_pair', 'direct', 1, 'Table 1b: 82.2 vs 81.3 (stage I vs '
          'direct)'),
    Claim('curriculum', 'direct', 1, 'Table 1b: 84.2 vs 81.3'),
)


def interval_stats(scores: Dict[str, np.ndarray], reference: str, *,
                   resamples: int, seed: int = 0) -> Dict[str, Dict]:
  """Accuracy and difference-from-reference intervals of every row.

  Args:
    scores: row key -> [seeds, videos] per-video top-1 (0/1), the same
      videos and seeds in the same order for every row.
    reference: the row differences are taken from (absent: none).
    resamples: bootstrap draws.
    seed: seeds the draws (every row uses the same draws).

  Returns:
    row -> {'accuracy': Interval, 'difference': Interval or None,
    'per_seed': [accuracy of each seed]}.
  """
  out = {}
  for key, x in scores.items():
    x = np.asarray(x, np.float64)
    multi = x.ndim == 2 and x.shape[0] > 1
    acc = bootstrap.bootstrap_mean(x, resamples=resamples, seed=seed,
                                   resample_seeds=multi)
    diff = None
    if reference in scores and key != reference:
      diff = bootstrap.paired_difference(x, scores[reference],
                                         resamples=resamples, seed=seed,
                                         resample_seeds=multi)
    out[key] = {'accuracy': acc, 'difference': diff,
                'per_seed': [float(r.mean()) for r in np.atleast_2d(x)]}
  return out


def claim_results(scores: Dict[str, np.ndarray], claims: Sequence[Claim], *,
                  resamples: int, seed: int = 0) -> List[Dict[str, Any]]:
  """Each claim whose two rows ran: its paired interval and verdict."""
  out = []
  for c in claims:
    if c.better not in scores or c.worse not in scores:
      continue
    a = np.asarray(scores[c.better], np.float64)
    multi = a.ndim == 2 and a.shape[0] > 1
    diff = bootstrap.paired_difference(a, scores[c.worse],
                                       resamples=resamples, seed=seed,
                                       resample_seeds=multi)
    per_seed = [float(x.mean() - y.mean()) for x, y in
                zip(np.atleast_2d(a), np.atleast_2d(scores[c.worse]))]
    out.append({'claim': c, 'difference': diff,
                'verdict': bootstrap.verdict(diff, c.sign),
                'seeds_same_sign': (sum((d > 0) == (c.sign > 0) and d != 0
                                        for d in per_seed)
                                    if c.sign else None),
                'per_seed': per_seed})
  return out


def _pct(v: Optional[float]) -> str:
  return '-' if v is None else f'{v:.1f}'


def _ratio(v: Optional[float]) -> str:
  return '-' if v is None else f'{v:.3f}'


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]
                    ) -> List[str]:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(row) + ' |' for row in body]
  return lines


def row_verdict(stats: Dict, paper: PaperRow) -> str:
  diff = stats.get('difference')
  if diff is None or paper.sign is None:
    return '(reference)' if diff is None else '-'
  return bootstrap.verdict(diff, paper.sign)


def results_table(rows: Sequence[Dict[str, Any]], stats: Dict[str, Dict],
                  paper: Dict[str, PaperRow], *, reference_label: str,
                  paper_scale: str, label_space: bool) -> List[str]:
  """The markdown table: ours (with intervals) | the paper's, per row.

  Args:
    rows: dicts with 'key', 'label' and, for SPL, 'classes', 'scr',
      'noise_ratio' of the label space pre-trained on.
    stats: `interval_stats` output.
    paper: row key -> PaperRow.
    reference_label: how the difference column names its reference.
    paper_scale: what the paper's numbers measure.
    label_space: add the label-space columns (SPL).
  """
  header = ['Method', 'top-1 % [95% CI]',
            f'vs {reference_label} [paired 95% CI]', 'per seed']
  if label_space:
    header += ['pre-train classes', 'SCR', 'noise ratio']
  header += [f'paper top-1 ({paper_scale}; not comparable)',
             'paper vs reference', 'direction here']
  body = []
  for r in rows:
    s = stats[r['key']]
    p = paper.get(r['key'], PaperRow(None, '-'))
    line = [r['label'], bootstrap.format_interval(s['accuracy']),
            bootstrap.format_interval(s['difference'], signed=True)
            if s['difference'] else '(reference)',
            ' / '.join(f'{100 * v:.1f}' for v in s['per_seed'])]
    if label_space:
      line += [str(r.get('classes') or '-'), _ratio(r.get('scr')),
               _ratio(r.get('noise_ratio'))]
    paper_diff = ('-' if p.top1 is None or p.reference_top1 is None or
                  p.sign is None else f'{p.top1 - p.reference_top1:+.1f}')
    line += [f'{_pct(p.top1)} ({p.source})', paper_diff,
             row_verdict(s, p)]
    body.append(line)
  return markdown_table(header, body)


# A fine-tuned model that gives one class to this share of the validation
# clips (balanced classes) learnt nothing: its row measures a failed run.
COLLAPSED_SHARE = 0.9


def collapsed_runs(rows: Sequence[Dict[str, Any]], seeds: Sequence[int],
                   threshold: float = COLLAPSED_SHARE) -> List[str]:
  """Report lines naming the collapsed runs of a table ([] if none).

  A run is collapsed when its fine-tuned model's most predicted class takes
  `threshold` or more of the validation clips (`top_class_share_per_seed`
  of each row; rows of older results without it are skipped).
  """
  found = []
  for r in rows:
    for seed, share in zip(seeds, r.get('top_class_share_per_seed') or ()):
      if share is not None and share >= threshold:
        found.append(f"{r['label']} (seed {seed}: {100 * share:.0f} %)")
  if not found:
    return []
  return ['', f'**Collapsed runs** (the fine-tuned model gives one class to '
          f'{100 * threshold:.0f} % or more of the validation clips, whose '
          'classes are balanced: it learnt nothing, and its accuracy is that '
          'class\'s share): ' + '; '.join(found) + '. Read these rows as '
          'failed training, not as the method\'s effect.']


def claims_table(results: Sequence[Dict[str, Any]], labels: Dict[str, str]
                 ) -> List[str]:
  header = ['paper ordering', 'paper', 'difference here [paired 95% CI]',
            'seeds with the paper\'s sign', 'verdict']
  body = []
  for r in results:
    c = r['claim']
    rel = '>' if c.sign > 0 else '~'
    seeds = ('-' if r['seeds_same_sign'] is None else
             f"{r['seeds_same_sign']} of {len(r['per_seed'])}")
    body.append([f'{labels[c.better]} {rel} {labels[c.worse]}', c.paper,
                 bootstrap.format_interval(r['difference'], signed=True),
                 seeds, r['verdict']])
  return markdown_table(header, body)


def verdict_summary(results: Sequence[Dict[str, Any]]) -> str:
  counts = {}
  for r in results:
    counts[r['verdict']] = counts.get(r['verdict'], 0) + 1
  order = (bootstrap.HELD, bootstrap.NOT_RESOLVED, bootstrap.REVERSED,
           bootstrap.CONSISTENT, bootstrap.DIFFERS)
  return ', '.join(f'{counts[v]} {v}' for v in order if v in counts)


VERDICT_LEGEND = (
    'Verdicts: **held**: the paired 95% interval of the difference lies on '
    'the paper\'s side of 0; **reversed**: it lies on the other side; **not '
    'resolved**: it contains 0 (this scale cannot tell). For a pair the '
    'paper calls comparable: **consistent** (the interval contains 0) or '
    '**differs**. Nothing is tuned to make an ordering come out: the world\'s '
    'parameters come from the papers\' descriptions (tfrecords_tools/'
    'synthetic_world.py) and the training settings are the demo\'s, the same '
    'for every row.')
