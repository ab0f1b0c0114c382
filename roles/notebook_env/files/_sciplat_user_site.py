"""sciplat: the notebook environment without Debian's packages, with the user's own.

Python turns the per-user site directory (~/.local/lib/pythonX.Y/site-packages)
off in a venv made without system site packages, and pip then refuses
`pip install --user`. The notebook environment's pyvenv.cfg therefore says
include-system-site-packages = true, and this module, imported from
sciplat-user-site.pth while Python adds the venv's site-packages at start-up
(before it adds anything else), removes the system prefixes from site.PREFIXES:
sys.path gets the venv's packages, then the user's, and never Debian's
/usr/lib/python3/dist-packages. `python -s` and PYTHONNOUSERSITE still leave
the user's packages out. Written by the sciplat notebook_env role.
"""

import site
import sys

if sys.prefix != sys.base_prefix:
    # site.venv() puts sys.prefix back in front: it becomes the only prefix
    del site.PREFIXES[:]
