"""Where generated model families live: the cache outside the clone, and links into it.

Both families (make_tiny_family.py, make_smol_family.py) are deterministic functions of
their builder's source, so they are built once per fingerprint into
``$LLM_EVO_CACHE/<family>/<fingerprint>`` (by default ``~/.cache/llm-evo``) and a clone's
``models/<family>`` is a link to that folder: a fresh clone, a second clone or CI reuses
the build instead of spending minutes of CPU on the same bytes. Nothing here is hashed into
a fingerprint, so changing it rebuilds nothing. make_smol_family.py keeps its own older copy
of these two (`cache_root`, `_link`): its fingerprint hashes its source, so moving them here
would rebuild that family (10-22 minutes) on every machine; do it with its next real change.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LLM_EVO_CACHE", Path.home() / ".cache" / "llm-evo"))


def point_link(link: Path, folder: Path) -> None:
    """Make `link` a symlink to `folder`, replacing what was there (an older link, or an
    in-place build) atomically, so that concurrent callers (pytest-xdist workers) never see
    it missing. Callers hold a lock when a real folder may have to be removed."""
    link, folder = Path(link).absolute(), Path(folder).resolve()
    if link.is_symlink() and link.resolve() == folder:
        return
    if link.exists() and not link.is_symlink():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder, target_is_directory=True)
    os.replace(tmp, link)
