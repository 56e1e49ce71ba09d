"""Money is integer micro-dollars: parsed exactly, formatted with 6 decimals, costs rounded
half up, never a float."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelhost.config import Settings
from modelhost.domain.money import (
    div_round_half_up,
    format_micros,
    gpu_cost_micros,
    parse_micros,
    to_decimal,
)


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("2", 2_000_000),
        ("2.0", 2_000_000),
        ("0.8", 800_000),
        (" 3.5 ", 3_500_000),
        ("0.000001", 1),
        ("12.500000", 12_500_000),
        ("-1.25", -1_250_000),
        ("1e-6", 1),
        (Decimal("0.1"), 100_000),
        (Decimal("2.50"), 2_500_000),
        (7, 7_000_000),
        ("0", 0),
    ],
)
def test_parse_is_exact(value: str | Decimal | int, micros: int) -> None:
    assert parse_micros(value) == micros


@pytest.mark.parametrize("value", ["0.0000001", "abc", "", "NaN", "Infinity", "1.2.3"])
def test_parse_refuses_what_is_not_an_exact_amount(value: str) -> None:
    with pytest.raises(ValueError):
        parse_micros(value)


@pytest.mark.parametrize("value", [0.1, 2.0, True])
def test_parse_refuses_floats(value: float) -> None:
    with pytest.raises(TypeError):
        parse_micros(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (12_500_000, "12.500000"),
        (256_000_000, "256.000000"),
        (-1, "-0.000001"),
        (-2_500_000, "-2.500000"),
        (123_456_789_012, "123456.789012"),
    ],
)
def test_format(micros: int, text: str) -> None:
    assert format_micros(micros) == text
    assert parse_micros(text) == micros
    assert to_decimal(micros) == Decimal(text)


@pytest.mark.parametrize(
    ("n", "d", "q"),
    [(0, 3, 0), (1, 3, 0), (2, 3, 1), (3, 2, 2), (5, 2, 3), (-5, 2, -3), (-1, 3, 0), (7, 7, 1)],
)
def test_round_half_up(n: int, d: int, q: int) -> None:
    assert div_round_half_up(n, d) == q


@pytest.mark.parametrize(
    ("gpu_ms", "price", "cost"),
    [
        # One GPU-hour at 2 USD.
        (3_600_000, 2_000_000, 2_000_000),
        # The seed's weekend: 64 h x 2 GPUs at 2 USD = 256 USD.
        (64 * 3_600_000 * 2, 2_000_000, 256_000_000),
        # One GPU-second at 3.5 USD/h = 972.2... micros -> 972.
        (1_000, 3_500_000, 972),
        # One ms at 1.8 USD/h = 0.5 micro exactly -> rounds half up to 1.
        (1, 1_800_000, 1),
        (1, 1_799_999, 0),
        (0, 2_000_000, 0),
        (60_000, 0, 0),
    ],
)
def test_gpu_cost(gpu_ms: int, price: int, cost: int) -> None:
    assert gpu_cost_micros(gpu_ms, price) == cost


@pytest.mark.parametrize(
    ("prices", "gpu", "micros"),
    [
        ("A100-80GB=2.0,H100-80GB=3.0", "A100-80GB", 2_000_000),
        ("A100-80GB=2.0,H100-80GB=3.0", "H100-80GB", 3_000_000),
        ("A100-80GB=2.0, L4-24GB = 0.8", "L4-24GB", 800_000),
        # 0.1 is not exact as a float; as a Decimal it is.
        ("X=0.1", "X", 100_000),
        ("X=1.0000005", "X", 1_000_001),
        ("X=abc", "X", 0),
        ("A100-80GB=2.0", "unknown", 0),
        ("CPU=0.0", "CPU", 0),
    ],
)
def test_settings_gpu_price_micros(prices: str, gpu: str, micros: int) -> None:
    s = Settings(gpu_prices=prices)
    assert s.gpu_price_micros(gpu) == micros
    assert isinstance(s.gpu_price_micros(gpu), int)
