"""Test-session hygiene: Jupyter, IPython, matplotlib and the CLI's default checkpoints
(``$XDG_CACHE_HOME``) write into a temporary folder.

Set at import time, before any test imports ipywidgets/IPython/matplotlib, so nothing is
written to the home folder of the machine running the tests (CI or a developer's).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="imgframe-test-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _variable, _folder in {
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "matplotlib",
    "XDG_CACHE_HOME": "cache",  # imgframe fetch without -o keeps its checkpoint there
}.items():
    os.environ.setdefault(_variable, os.path.join(_HOME, _folder))
os.environ.setdefault("MPLBACKEND", "Agg")
