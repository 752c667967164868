r"""What resuming at the checkpointed input position costs, one run.

    python -m benchmarks.bench_resume [--preset=spl|cpd] [--skip_batches=40]

A `loop.deterministic` run that resumes at step s starts its input where the
checkpoint stopped: each input pipeline skips the records of the s steps
done before anything is parsed or decoded (`make_dataset(skip_batches=)`,
`spl.loop.training_input`). The position is the step counter the checkpoint
already holds, so a training step pays nothing for it; the price is paid
once per resume: reading (not decoding) the consumed records. This times,
on the benchmark records of `bench_input_pipeline` (same presets):

* the reference: producing `--skip_batches` training batches (the input work
  the run did for those steps);
* the resume: `make_dataset(skip_batches=...)` up to its first batch, minus
  the time of a first batch without skipping;

and prints the ratio (the one-off cost of a resume as a fraction of the
input work it skips), with CPU seconds beside wall seconds. Each is timed
`--rounds` times, interleaved, best round.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from typing import Dict

from benchmarks import bench_input_pipeline as bench
from spl import input_pipeline


def _time(fn) -> tuple:
  start, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> Dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', choices=sorted(bench.PRESETS),
                      default='spl')
  parser.add_argument('--num_clips', type=int, default=64)
  parser.add_argument('--frames_per_clip', type=int, default=64)
  parser.add_argument('--num_shards', type=int, default=4)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--skip_batches', type=int, default=40)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args(argv)
  preset = bench.PRESETS[args.preset]
  bench.HEIGHT, bench.WIDTH = preset['frame_height'], preset['frame_width']
  tmp = tempfile.mkdtemp(prefix='bench_resume_')
  try:
    pattern = bench.write_records(tmp, args.num_clips, args.frames_per_clip,
                                  args.num_shards)
    kwargs = dict(is_training=True, batch_size=args.batch_size,
                  num_frames=preset['num_frames'], stride=preset['stride'],
                  crop_size=preset['crop_size'], deterministic=True, seed=1)

    def batches(n, skip=0):
      ds = input_pipeline.make_dataset(pattern, skip_batches=skip, **kwargs)
      for _ in ds.take(n):
        pass

    best = {}
    for _ in range(args.rounds):
      for name, fn in (
          ('consumed', lambda: batches(args.skip_batches)),
          ('first', lambda: batches(1)),
          ('resumed', lambda: batches(1, args.skip_batches))):
        wall, cpu = _time(fn)
        old = best.get(name, (float('inf'), float('inf')))
        best[name] = (min(old[0], wall), min(old[1], cpu))
    skip_wall = max(0.0, best['resumed'][0] - best['first'][0])
    skip_cpu = max(0.0, best['resumed'][1] - best['first'][1])
    out = {'wall_ratio': skip_wall / best['consumed'][0],
           'cpu_ratio': skip_cpu / best['consumed'][1]}
    print(f'{args.preset}: {args.skip_batches} batches of '
          f'{args.batch_size}: producing them {best["consumed"][0]:.2f} s '
          f'({best["consumed"][1]:.2f} CPU s); skipping them on resume '
          f'{skip_wall:.3f} s ({skip_cpu:.3f} CPU s)')
    print(f'resume cost / input work skipped: {out["wall_ratio"]:.3f} wall, '
          f'{out["cpu_ratio"]:.3f} CPU (once per resume; 0 per step)')
    return out
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
