"""FastAPI dependencies of the control-plane routes: the server's parts they use (`ApiServices`,
which `serve.services.Services` provides) and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Request

from modelhost.config import Settings
from modelhost.config.catalog import CatalogModel
from modelhost.directory.live import Directory
from modelhost.errors import Forbidden
from modelhost.orchestrator.inventory import Inventory
from modelhost.security.secretbox import SecretBox
from modelhost.store.db import Database
from modelhost.store.token_usage import TokenUsage
from modelhost.store.users import Principal
from modelhost.web.auth import bearer_token, resolve_principal


class ApiServices(Protocol):
    """The parts of a server the control-plane routes use."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def secrets(self) -> SecretBox: ...

    @property
    def catalog(self) -> dict[str, CatalogModel]: ...

    @property
    def inventory(self) -> Inventory: ...

    @property
    def token_usage(self) -> TokenUsage: ...

    @property
    def directory(self) -> Directory: ...

    def notify(self) -> None:
        """Ask the reconciler to run now (the desired state changed)."""


def get_services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


def get_principal(
    request: Request, services: Annotated[ApiServices, Depends(get_services)]
) -> Principal:
    return resolve_principal(services, bearer_token(request))


def get_admin(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not who.is_admin:
        raise Forbidden("this route is for admins only", code="admin_only")
    return who


ServicesDep = Annotated[ApiServices, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
