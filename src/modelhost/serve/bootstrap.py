"""First start: make sure the `admin` user exists and can log in."""

from __future__ import annotations

import logging
import os

from modelhost.errors import NotFound
from modelhost.serve.services import Services
from modelhost.store import users as users_store

log = logging.getLogger(__name__)

ADMIN = "admin"


def bootstrap_admin(services: Services) -> str | None:
    """Create the admin on first start. With MODELHOST_ADMIN_TOKEN set, that token works; else
    a token is generated, written to <data-dir>/admin-token (0600) and returned (printed once
    by `modelhost serve`). Returns the new plaintext token, or None if nothing new was made."""
    settings = services.settings
    configured = settings.admin_token.get_secret_value() if settings.admin_token else None
    with services.db.session() as s:
        try:
            admin = users_store.get_user(s, ADMIN)
            created = False
        except NotFound:
            admin = users_store.create_user(s, ADMIN, gpu_limit=1024, is_admin=True)
            created = True
        if configured:
            users_store.install_token(s, admin, "admin-env", configured)
            return None
        if not created:
            return None
        _, token = users_store.issue_token(s, admin, "admin-bootstrap")
    path = settings.data_dir / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # The mode above applies only to a new file: one left by an earlier run is made private too.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("admin token written to %s", path)
    return token
