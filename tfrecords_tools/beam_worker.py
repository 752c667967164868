"""Beam's SDK worker process for the DirectRunner's multi-processing mode.

`beam_utils.make_pipeline` starts each worker process of
`--direct_running_mode=multi_processing` as `python -m
tfrecords_tools.beam_worker` instead of Beam's `python -m
apache_beam.runners.worker.sdk_worker_main`. It is the same worker
(`sdk_worker_main.main`), made readable:

* importing the package first drops Beam's optional-dependency warnings
  (see `tfrecords_tools/__init__.py`), which every worker printed at start;
* Beam's own INFO messages (a dozen per worker: channels, options) stay at
  WARNING;
* the worker's log lines (the jobs' progress lines among them) go to its
  stderr, which is the job's, once, prefixed like absl's with the worker's
  pid; Beam would also relay each of them through the runner's logging
  service, which prints them a second time as one long protobuf dump.
"""

import importlib
import logging
import os
import sys

# Beam's worker reads this to send its logs to the runner (the relay above).
_LOGGING_SERVICE_VARIABLE = 'LOGGING_API_SERVICE_DESCRIPTOR'


def main() -> None:
  logging.basicConfig(
      format=('%(levelname).1s%(asctime)s.%(msecs)03d %(process)d '
              '%(filename)s:%(lineno)d] %(message)s'),
      datefmt='%m%d %H:%M:%S', stream=sys.stderr)
  logging.getLogger('apache_beam').setLevel(logging.WARNING)
  # Two warnings every local worker gives: no staging directory (there is
  # none to have on one machine) and runner-only options it cannot parse
  # (the job's own options were checked by the tool, `cli`).
  for name in ('apache_beam.runners.worker.sdk_worker_main',
               'apache_beam.options.pipeline_options'):
    logging.getLogger(name).setLevel(logging.ERROR)
  os.environ.pop(_LOGGING_SERVICE_VARIABLE, None)
  # Before Beam: the package's import quiets Beam's (its __init__).
  importlib.import_module('tfrecords_tools')
  from apache_beam.runners.worker import sdk_worker_main  # pylint: disable=g-import-not-at-top
  sdk_worker_main.main(sys.argv)


if __name__ == '__main__':
  main()
