"""How every figure is saved: a bare matplotlib Figure, written atomically.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` rendered by the
non-interactive Agg canvas, never through :mod:`matplotlib.pyplot`, so no GUI
backend is touched, no global pyplot state is kept and nothing needs closing.
Files are written atomically (temp file in the same directory, then
:func:`os.replace`); a PDF saved with ``metadata={"CreationDate": None}``
carries no creation date, so reruns give equal bytes.
"""

from __future__ import annotations

import os
from typing import Any

from matplotlib.figure import Figure

from mtlrepro.io import write_atomic

PNG_DPI = 150


def save_figure_atomic(fig: Figure, path: str | os.PathLike[str], fmt: str, **kwargs: Any) -> None:
    """Save ``fig`` as ``fmt`` to ``path`` atomically (temp file in the same dir + ``os.replace``)."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
