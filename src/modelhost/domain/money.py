"""Money as integer micro-dollars (1 USD = 1_000_000 micros): exact, never float.

Prices are parsed from decimal strings (or `Decimal`) exactly; an amount with more than six
decimals is refused rather than silently rounded. Costs round half up to the micro-dollar.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
MS_PER_HOUR = 3_600_000


def parse_micros(value: str | Decimal | int) -> int:
    """`"2.5"`, `Decimal("2.5")` or `2` (USD) -> 2_500_000 micros, exactly. Floats are refused
    (they cannot be exact); so are NaN, infinities and sub-micro precision."""
    if isinstance(value, (bool, float)):
        raise TypeError("money must be a decimal string, a Decimal or an int, never a float")
    if isinstance(value, int):
        return value * MICROS_PER_USD
    try:
        d = value if isinstance(value, Decimal) else Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    micros = d * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"more precise than a micro-dollar: {value!r}")
    return int(micros)


def format_micros(micros: int) -> str:
    """2_500_000 -> `"2.500000"`; negative amounts keep their sign (`"-0.000001"`)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def to_decimal(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def div_round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up (away from zero for halves), in integers."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    q, r = divmod(abs(numerator), denominator)
    if 2 * r >= denominator:
        q += 1
    return q if numerator >= 0 else -q


def gpu_cost_micros(gpu_ms: int, usd_per_hour_micros: int) -> int:
    """The cost of `gpu_ms` GPU-milliseconds (milliseconds x num_gpus, already multiplied) at
    `usd_per_hour_micros` per GPU-hour, rounded half up to the micro-dollar."""
    return div_round_half_up(gpu_ms * usd_per_hour_micros, MS_PER_HOUR)


TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per 1M tokens


def token_cost_micros(
    prompt_tokens: int,
    completion_tokens: int,
    prompt_micros_per_1m: int,
    completion_micros_per_1m: int,
) -> int:
    """prompt x prompt price / 1M + completion x completion price / 1M (prices in micros per
    1M tokens), summed exactly and rounded half up once, to the micro-dollar."""
    return div_round_half_up(
        prompt_tokens * prompt_micros_per_1m + completion_tokens * completion_micros_per_1m,
        TOKENS_PER_PRICE_UNIT,
    )
