"""Deprecated: the SDK is ``lambdahat`` now (``from lambdahat import Client, AsyncClient``).

``client`` and its submodules (``client.errors``, ``client.models``, ...) keep importing, as the
same objects as ``lambdahat``'s, for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from lambdahat import *  # noqa: F403 - the deprecated name re-exports the whole public surface
from lambdahat import __all__  # noqa: F401

warnings.warn("the 'client' package is deprecated; import from 'lambdahat' instead "
              "(from lambdahat import Client, AsyncClient)", DeprecationWarning, stacklevel=2)

# `from client.errors import NotFound` finds the very module `lambdahat.errors` (same classes, so
# isinstance checks and except clauses keep working across the two names).
for _name in ("errors", "models", "sdk", "serialize", "cli", "cluster_status"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"lambdahat.{_name}")
del _name
