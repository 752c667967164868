"""A read-only directory for tests of commands, also when tests run as root."""

import os
import subprocess

import pytest


def read_only_command(directory, command):
  """`command` to run with `directory` read-only.

  Permissions do not stop root, so as root the command runs in a user and
  mount namespace where `directory` is bind-mounted read-only (skipped
  where namespaces are not allowed); otherwise the directory is made
  read-only.
  """
  if os.geteuid() != 0:
    os.chmod(directory, 0o555)
    return list(command)
  probe = subprocess.run(['unshare', '-rm', 'true'], capture_output=True,
                         check=False)
  if probe.returncode != 0:
    pytest.skip('cannot make a directory read-only for root here')
  return ['unshare', '-rm', 'sh', '-c',
          'mount --bind -o ro "$0" "$0" && exec "$@"', str(directory)
         ] + list(command)


def read_only_reason():
  """The error text of a write into `read_only_command`'s directory."""
  import errno  # pylint: disable=g-import-not-at-top
  return os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)
