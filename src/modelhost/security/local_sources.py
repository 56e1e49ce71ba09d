"""Who may name a server path as weights or adapter source (`local`).

A path on the server is the operator's filesystem, not a tenant's: letting anyone name one
would let them load any folder the server can read (another user's adapter files in the data
dir included) and probe which paths exist. So `local` is for admins; an operator may open it to
everyone under one folder (`local_sources_root`), never inside the data dir. A refusal says the
same whether or not the path exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelhost.errors import Forbidden, ValidationFailed


def allowed_local_path(
    path: str, *, is_admin: bool, root: Path | None, data_dir: Path, param: str
) -> str:
    """The path to read: as given for admins; for others the real path (symlinks resolved, so
    a link cannot lead out of the root) once it is inside the allowed root. Raises Forbidden
    (403) when the caller may not use it."""
    if is_admin:
        return path
    if root is None:
        raise Forbidden(
            "local paths are for admins on this server; use hf or base_model, or ask the "
            "operator to allow a folder for everyone (local_sources_root)",
            param=param,
            code="local_source_forbidden",
        )
    if not Path(path).is_absolute():
        raise ValidationFailed(f"{param} must be an absolute path", param=param)
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(root)) or real.is_relative_to(
        os.path.realpath(data_dir)
    ):
        raise Forbidden(
            f"{param} must be inside {root}, the folder this server allows for local sources",
            param=param,
            code="local_source_forbidden",
        )
    return str(real)
