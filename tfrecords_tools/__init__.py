"""Clip records: writer, relabeller, readers and their tools.

Importing the package quietens two warnings Apache Beam logs when it is
imported without its optional Google Cloud extras ("Failed to import
GCSFileSystem", "apitools not found"): every Beam tool here printed them
first thing, where they read like errors, though nothing here needs those
extras unless a `gs://` path is used, and then Beam's own error names the
missing extra (`pip install -e .[gcp]`). Only those two messages are
dropped; the loggers are otherwise untouched. It happens here because the
tools import Beam at module level, after the package.
"""

import logging as _logging

# Beam's messages start with these (apache_beam/io/filesystems.py,
# apache_beam/io/gcp/internal/clients/bigquery/__init__.py).
_OPTIONAL_DEPENDENCY_WARNINGS = ('Failed to import GCSFileSystem',
                                 'apitools not found')


def _not_an_optional_dependency_warning(record: _logging.LogRecord) -> bool:
  return not (isinstance(record.msg, str) and
              record.msg.startswith(_OPTIONAL_DEPENDENCY_WARNINGS))


# The GCS message is logged on Beam's module logger, the apitools one on the
# root logger (`logging.warning`); a logger's filters see only its own
# records, so each gets the filter.
for _name in ('apache_beam.io.filesystems', ''):
  _logger = _logging.getLogger(_name)
  if _not_an_optional_dependency_warning not in _logger.filters:
    _logger.addFilter(_not_an_optional_dependency_warning)
