"""Exact money arithmetic on Polars columns: scaled 128-bit integers, no floats, no hidden rounding.

Polars `Decimal` multiplication keeps the operands' scale and rounds the product, so rating works
on integers instead:

- a quantity is an `Int128` count of 10^-12 units (`Q12`), the exact storage of DECIMAL(38, 12);
- a unit price is an `Int128` count of 10^-12 major units (`P12`; rules allow 12 decimals);
- an amount is an `Int128` count of 10^-24 major units (`A24`): `Q12 * P12` is exact.

`A24` holds up to 1.7 * 10^14 major units per line; `checked_mul` raises `BadInputError` before a
product could overflow (beyond DECIMAL(38, 24)), instead of wrapping silently. Converting between
DECIMAL(38, s) and these integers is a zero-copy reinterpretation of the Arrow decimal128 buffer.
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pyarrow as pa

from metering.errors import BadInputError

QUANTITY_SCALE = 12
PRICE_SCALE = 12
AMOUNT_SCALE = 24
LIMIT = 10**38 - 1           # the largest integer a DECIMAL(38, s) column can hold
QUANTITY_DTYPE = pl.Decimal(38, QUANTITY_SCALE)
AMOUNT_DTYPE = pl.Decimal(38, AMOUNT_SCALE)
I128 = pl.Int128


def lit(value: int) -> pl.Expr:
    """An Int128 literal (Polars refuses to mix Python ints with Int128 columns)."""
    return pl.lit(value, dtype=I128)


def scaled_int(value: Decimal | int, scale: int) -> int:
    """`Decimal("0.002")`, scale 12 -> 2_000_000_000. Raises if the value has more decimals than `scale`."""
    scaled = Decimal(value).scaleb(scale)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {scale} decimal places")
    return int(scaled)


def decimal_to_int(series: pl.Series, scale: int) -> pl.Series:
    """DECIMAL(38, scale) -> Int128 of 10^-scale units, bit for bit."""
    s = series.cast(pl.Decimal(38, scale))
    arrow = s.to_arrow()
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    return pl.Series(series.name, pl.from_arrow(arrow.view(pa.decimal128(38, 0))).cast(I128))


def int_to_decimal(series: pl.Series, scale: int) -> pl.Series:
    """Int128 of 10^-scale units -> DECIMAL(38, scale), bit for bit (values must be within +-LIMIT)."""
    arrow = series.cast(pl.Decimal(38, 0)).to_arrow()
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    return pl.Series(series.name, pl.from_arrow(arrow.view(pa.decimal128(38, scale))))


TOO_LARGE = "an amount exceeds 10^14 major units in one line (quantity x price too large to rate exactly)"


class AmountTooLargeError(BadInputError):
    """A product beyond what a line's amount holds; `rows` are the offending rows of the frame, so a
    caller can name the line (its customer, charge and quantity) and where that quantity came from."""

    def __init__(self, what: str, rows: pl.DataFrame, where: str | None = None) -> None:
        super().__init__(f"{what}: {TOO_LARGE}; {where or f'first offending row: {rows.row(0, named=True)}'}")
        self.what = what
        self.rows = rows


def checked_mul(frame: pl.DataFrame, a: str, b: str, out: str, what: str) -> pl.DataFrame:
    """`out = a * b` for non-negative Int128 columns, refusing any product beyond DECIMAL(38)."""
    too_big = frame.filter((pl.col(b) > 0) & (pl.col(a) > lit(LIMIT) // pl.col(b)))
    if too_big.height:
        raise AmountTooLargeError(what, too_big)
    return frame.with_columns((pl.col(a) * pl.col(b)).alias(out))


def round_ratio(num: pl.Expr, den: pl.Expr, mode: pl.Expr) -> pl.Expr:
    """round(num / den) to an integer for num >= 0, den > 0, ties by `mode` ("half_up" | "half_even")."""
    q = num // den
    twice_r = (num % den) * lit(2)
    up = (twice_r > den) | ((twice_r == den) & ((mode == "half_up") | (q % lit(2) == lit(1))))
    return q + up.cast(I128)


def minor_unit_divisor(digits: pl.Expr) -> pl.Expr:
    """10^(24 - digits) as Int128: A24 / this = amount in minor units (cents, yen)."""
    return pl.when(digits == 0).then(lit(10**AMOUNT_SCALE)).otherwise(lit(10 ** (AMOUNT_SCALE - 2)))


def to_decimal_string(value: pl.Expr, scale: int) -> pl.Expr:
    """A non-negative Int128 of 10^-scale units as a plain decimal string (`1.5`, `0`), for audit JSON."""
    unit = lit(10**scale)
    whole = (value // unit).cast(pl.String)
    frac = (value % unit).cast(pl.String).str.zfill(scale).str.strip_chars_end("0")
    return pl.when(frac == "").then(whole).otherwise(pl.concat_str([whole, pl.lit("."), frac]))


def with_decimal_strings(frame: pl.DataFrame, columns: dict[str, tuple[str, int]]) -> pl.DataFrame:
    """Add `out` = decimal string of Int128 column `src` at `scale`, for each out: (src, scale).

    Same result as `to_decimal_string`, but each intermediate is computed once (two passes).
    """
    parts = []
    for out, (src, scale) in columns.items():
        unit = lit(10**scale)
        parts += [(pl.col(src) // unit).cast(pl.String).alias(f"_{out}_w"),
                  (pl.col(src) % unit).cast(pl.String).str.zfill(scale).str.strip_chars_end("0").alias(f"_{out}_f")]
    frame = frame.with_columns(parts)
    return frame.with_columns(
        pl.when(pl.col(f"_{out}_f") == "").then(pl.col(f"_{out}_w"))
        .otherwise(pl.concat_str([pl.col(f"_{out}_w"), pl.lit("."), pl.col(f"_{out}_f")])).alias(out)
        for out in columns
    ).drop([c for out in columns for c in (f"_{out}_w", f"_{out}_f")])
