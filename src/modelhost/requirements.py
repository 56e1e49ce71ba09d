"""Installed versions, checked against what modelhost needs before a server or engine starts.

pip lets a later install downgrade a dependency with only a warning: `lorax-client` pins
huggingface-hub<1, and with transformers 5 installed every GGUF model then failed to start with
"cannot import name 'ResolvedRevision' from 'huggingface_hub'", deep inside transformers. So a
start checks modelhost's own requirements (with the extras that process needs) and the
requirements those packages declare in turn, and refuses with one line naming the package and
the version needed. `unmet` takes its metadata readers as arguments, so it is tested as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

VersionOf = Callable[[str], str | None]
RequiresOf = Callable[[str], list[str]]


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requires(name: str) -> list[str]:
    try:
        return list(metadata.requires(name) or [])
    except metadata.PackageNotFoundError:
        return []


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def _parse(lines: Iterable[str]) -> list[Requirement]:
    out = []
    for line in lines:
        try:
            out.append(Requirement(line))
        except InvalidRequirement:
            continue  # a malformed requirement of some other package is not ours to judge
    return out


def _satisfies(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True  # an unparseable version (a local build): do not block on it


def unmet(
    extras: tuple[str, ...] = (),
    *,
    package: str = "modelhost",
    version_of: VersionOf = _installed,
    requires_of: RequiresOf = _requires,
) -> list[str]:
    """One sentence per requirement the installed packages do not meet: modelhost's own (with
    `extras`), then those of its direct dependencies. Empty when modelhost is not installed as
    a distribution (run from a source tree), since then nothing declares what it needs."""
    if version_of(package) is None:
        return []
    problems: list[str] = []
    direct = [r for r in _parse(requires_of(package)) if _applies(r, extras)]
    for req in direct:
        found = version_of(req.name)
        if found is None:
            problems.append(_missing(req, package))
        elif not _satisfies(req, found):
            problems.append(_too_old_or_new(req, found, package))
    for dep in direct:
        dep_version = version_of(dep.name)
        if dep_version is None:
            continue
        for req in _parse(requires_of(dep.name)):
            if not _applies(req, dep.extras) or canonicalize_name(req.name) == canonicalize_name(
                package
            ):
                continue
            found = version_of(req.name)
            if found is None:
                problems.append(_missing(req, f"{dep.name} {dep_version}"))
            elif not _satisfies(req, found):
                problems.append(_too_old_or_new(req, found, f"{dep.name} {dep_version}"))
    return list(dict.fromkeys(problems))


def _wanted(req: Requirement) -> str:
    return f"{req.name}{req.specifier}"


def _missing(req: Requirement, who: str) -> str:
    return (
        f"{req.name} is not installed, but {who} needs {_wanted(req)}: pip install '{_wanted(req)}'"
    )


def _too_old_or_new(req: Requirement, found: str, who: str) -> str:
    return (
        f"{req.name} {found} is installed, but {who} needs {_wanted(req)}: "
        f"pip install '{_wanted(req)}'"
    )
