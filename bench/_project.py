"""What every bench does before its imports: run on the project's virtualenv, import this checkout.

A bench starts with ``import _project`` (Python puts the script's own directory, bench/, first on
sys.path, whatever the working directory) and ``_project.use(__file__, <the repository's directories
it imports from>)``, which

* re-executes the script with ``.venv/bin/python`` (what ``bash .ci/setup.sh`` makes) when another
  interpreter started it, so ``python3 bench/<name>.py`` works as well as ``.venv/bin/python
  bench/<name>.py``, README's command;
* puts ``operator/`` and the given directories (e.g. ``tests/redis``, whose helpers start the
  redis-server processes) first on sys.path, as paths relative to this file, never to the working
  directory: the bench runs this checkout's operator even when the virtualenv's editable install
  points at another one.

This file is not a bench (no ``--smoke``); tests/unit/test_bench_commands.py skips names starting
with ``_``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
# set on the re-executed process: never re-execute twice, whatever sys.prefix says
_REEXECUTED = "RMSG_BENCH_IN_VENV"


def in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def use(script: str, *directories: str) -> Path:
    """Make ``script`` (the caller's ``__file__``) run as described above; the repository's root."""
    started_as_script = bool(sys.argv) and Path(sys.argv[0]).resolve() == Path(script).resolve()
    if started_as_script and not in_project_venv() and VENV_PYTHON.exists() and not os.environ.get(_REEXECUTED):
        os.environ[_REEXECUTED] = "1"
        argv = [str(VENV_PYTHON), str(Path(script).resolve()), *sys.argv[1:]]
        os.execv(argv[0], argv)  # noqa: S606 - the project's own interpreter, the same script and arguments
    for entry in reversed(("operator", *directories)):
        path = str(ROOT / entry)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    return ROOT
