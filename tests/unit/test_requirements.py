"""The start-up check of installed versions (modelhost/requirements.py), as a table."""

from __future__ import annotations

import pytest

from modelhost.requirements import unmet

REQUIRES = {
    "modelhost": [
        "httpx>=0.27",
        "packaging>=23",
        'transformers>=4.56; extra == "engine"',
        'psycopg[binary]>=3.1; extra == "postgres"',
    ],
    "transformers": [
        "huggingface-hub<3.0,>=1.31.0",
        "tokenizers<0.24,>=0.23.1",
        'torch>=2.4; extra == "torch"',  # an extra modelhost does not ask for
    ],
    "psycopg": ['psycopg-binary==3.2.1; extra == "binary"'],
    "httpx": ["modelhost>=0"],  # a cycle back to us is ignored
}
GOOD = {
    "modelhost": "0.1.0",
    "httpx": "0.28.1",
    "packaging": "24.0",
    "transformers": "5.2.0",
    "huggingface-hub": "2.4.0",
    "tokenizers": "0.23.3",
    "psycopg": "3.2.1",
    "psycopg-binary": "3.2.1",
}


def check(installed: dict[str, str | None], extras: tuple[str, ...] = ()) -> list[str]:
    versions = {**GOOD, **installed}
    return unmet(
        extras,
        version_of=lambda name: versions.get(name.lower().replace("_", "-")),
        requires_of=lambda name: REQUIRES.get(name.lower(), []),
    )


def test_everything_in_place_is_nothing_to_report() -> None:
    assert check({}, ("engine", "postgres")) == []


@pytest.mark.parametrize(
    ("installed", "extras", "expected"),
    [
        (
            {"httpx": "0.20.0"},
            (),
            "httpx 0.20.0 is installed, but modelhost needs httpx>=0.27: pip install 'httpx>=0.27'",
        ),
        (
            {"packaging": None},
            (),
            "packaging is not installed, but modelhost needs packaging>=23",
        ),
        # The case seen in the field: another package's pin downgraded the Hub client.
        (
            {"huggingface-hub": "0.36.0"},
            ("engine",),
            "huggingface-hub 0.36.0 is installed, but transformers 5.2.0 needs "
            "huggingface-hub<3.0,>=1.31.0: pip install 'huggingface-hub<3.0,>=1.31.0'",
        ),
        ({"transformers": "4.45.0"}, ("engine",), "modelhost needs transformers>=4.56"),
        ({"transformers": None}, ("engine",), "transformers is not installed"),
        # Extras pull in the extra's own pins (psycopg[binary] -> psycopg-binary).
        ({"psycopg-binary": "3.1.0"}, ("postgres",), "psycopg 3.2.1 needs psycopg-binary==3.2.1"),
    ],
)
def test_each_problem_names_the_package_and_the_version_needed(
    installed: dict[str, str | None], extras: tuple[str, ...], expected: str
) -> None:
    problems = check(installed, extras)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_extras_the_process_does_not_use_are_not_checked() -> None:
    assert check({"transformers": None, "huggingface-hub": "0.1"}) == []
    assert check({"psycopg": None}, ("engine",)) == []


def test_a_source_tree_without_installed_metadata_is_not_checked() -> None:
    assert check({"modelhost": None, "httpx": "0.1"}) == []
