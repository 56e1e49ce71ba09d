"""Engine flags modelhost sets itself, which a deployment's `engine_args` may not override.

The engine parses its command line with argparse (`modelhost.engine.args.build_parser`), which
lets the last occurrence of a flag win and expands unique prefixes (`--ho` means `--host`), and
takes `--host=x` as well as `--host x`. So a user flag is refused when argparse would read it
as one of ours, in any of those spellings: otherwise `--host 0.0.0.0` would expose a replica's
unauthenticated engine API beyond loopback.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelhost.engine.args import build_parser


def owned_flags() -> tuple[str, ...]:
    """Every option string of the engine's common parser (`--help` included: it would exit)."""
    parser = build_parser()
    return tuple(sorted({s for action in parser._actions for s in action.option_strings}))


def _claims(arg: str, owned: Iterable[str]) -> list[str]:
    """The owned flags argparse could read `arg` as (exact, `=value`, or an abbreviation)."""
    if not arg.startswith("-") or arg == "--":
        return []
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        # Any prefix argparse would expand, or refuse as ambiguous: both are ours to refuse.
        return [flag for flag in owned if flag.startswith("--") and flag.startswith(name)]
    # A single dash: argparse reads `-hx` as `-h` with the value `x`.
    return [flag for flag in owned if not flag.startswith("--") and name[:2] == flag]


# Engine flags whose value is a path on the server (the builtin engine's cache of converted
# weights and hub downloads): an operator's choice, like `local` sources, not a tenant's, who
# could otherwise make the server read or write any folder it can.
SERVER_PATH_FLAGS = ("--cache-dir",)


def _matching(args: Iterable[str], flags: Iterable[str]) -> list[str]:
    flags = tuple(flags)
    out: list[str] = []
    for arg in args:
        if _claims(arg, flags) and arg not in out:
            out.append(arg)
    return out


def refused_engine_args(args: Iterable[str]) -> list[str]:
    """The user's args that name a flag modelhost owns, in the order given, without repeats."""
    return _matching(args, owned_flags())


def server_path_args(args: Iterable[str]) -> list[str]:
    """The user's args that name a server path flag (SERVER_PATH_FLAGS), in any spelling."""
    return _matching(args, SERVER_PATH_FLAGS)


def refusal_message(refused: list[str]) -> str:
    named = ", ".join(refused)
    return (
        f"engine_args may not set flags modelhost sets itself: {named} (modelhost owns "
        f"{', '.join(f for f in owned_flags() if f.startswith('--'))}, in any spelling or "
        "abbreviation); use the deployment's own fields instead (max_batch_size, "
        "max_active_adapters, preloaded_adapters, the weights and gpu)"
    )
