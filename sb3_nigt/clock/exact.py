"""Exact simulated time: sums of rational multiples of square roots, Σ_r q_r √r.

Every time the simulated clock handles is of this form: a decimal input such as ``0.1`` is read as the rational
1/10 (the shortest decimal that prints the float), the ``"sqrt"`` preset gives h_i = √i, and sums of these stay
in the same set. Two such numbers are compared exactly:

- **equality**: square roots of distinct square-free integers are linearly independent over the rationals
  (Besicovitch, 1940), so Σ_r q_r √r (r square-free) is 0 only when every q_r is 0. Equal times are therefore
  recognised as equal, and ties go to the documented rule (the lower agent index);
- **order**: when two times differ, the sign of their difference is decided with integer arithmetic
  (``math.isqrt``) at doubling precision until the error bound excludes 0, which always happens because the
  difference is non-zero.

A float approximation decides comparisons that are far from a tie (the common case), so the exact path runs only
for near-ties. See ``docs/time.md`` ("Exact time").
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Union

Number = Union[int, Fraction]

# Relative margin under which the float approximation is not trusted and the exact comparison decides.
_NEAR = 1e-9


@lru_cache(maxsize=None)
def _square_free(n: int) -> tuple[int, int]:
    """n = s² · r with r square-free; returns (s, r). ``n`` >= 1."""
    s, r, p = 1, 1, 2
    while p * p <= n:
        while n % (p * p) == 0:
            n //= p * p
            s *= p
        if n % p == 0:
            n //= p
            r *= p
        p += 1
    return s, r * n


def decimal_fraction(value: float) -> Fraction:
    """The rational that the float ``value`` prints as: ``0.1`` → 1/10 (``repr``, the shortest round-trip decimal).

    :raises ValueError: for NaN or an infinite value.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"time: must be finite, got {value}")
    return Fraction(repr(value))


class ExactTime:
    """An exact non-negative-or-signed real number Σ_r q_r √r (r square-free integers, q_r rationals), in seconds.

    Immutable, hashable and picklable. Supports ``+``, ``-``, multiplication by an integer or a rational, the six
    comparisons (exact), and ``float()`` (correctly rounded per term, never accumulated).

    Build one with :meth:`of` (an int, a Fraction or a float read as its decimal), :meth:`sqrt` or :data:`ZERO`.
    """

    __slots__ = ("terms", "approx", "magnitude")

    def __init__(self, terms: dict[int, Fraction]):
        self.terms: tuple[tuple[int, Fraction], ...] = tuple(sorted((r, q) for r, q in terms.items() if q != 0))
        self.approx = math.fsum(float(q) * math.sqrt(r) for r, q in self.terms)
        self.magnitude = math.fsum(abs(float(q)) * math.sqrt(r) for r, q in self.terms)

    # ---------------------------------------------------------------------------------------------- builders
    @classmethod
    def of(cls, value: Union[int, float, Fraction, "ExactTime"]) -> "ExactTime":
        """An int or Fraction as is; a float as the decimal it prints as (``0.1`` → 1/10)."""
        if isinstance(value, ExactTime):
            return value
        if isinstance(value, bool):
            raise TypeError("a time cannot be a bool")
        if isinstance(value, (int, Fraction)):
            return cls({1: Fraction(value)})
        return cls({1: decimal_fraction(value)})

    @classmethod
    def sqrt(cls, n: int, coefficient: Number = 1) -> "ExactTime":
        """coefficient · √n exactly (n a non-negative integer)."""
        n = int(n)
        if n < 0:
            raise ValueError(f"sqrt: n must be >= 0, got {n}")
        if n == 0:
            return cls({})
        s, r = _square_free(n)
        return cls({r: Fraction(coefficient) * s})

    # ----------------------------------------------------------------------------------------------- algebra
    def __add__(self, other: object) -> "ExactTime":
        other = _coerce(other)
        if other is None:
            return NotImplemented
        terms = dict(self.terms)
        for r, q in other.terms:
            terms[r] = terms.get(r, Fraction(0)) + q
        return ExactTime(terms)

    __radd__ = __add__

    def __neg__(self) -> "ExactTime":
        return ExactTime({r: -q for r, q in self.terms})

    def __sub__(self, other: object) -> "ExactTime":
        other = _coerce(other)
        if other is None:
            return NotImplemented
        return self + (-other)

    def __mul__(self, factor: object) -> "ExactTime":
        if isinstance(factor, bool) or not isinstance(factor, (int, Fraction)):
            return NotImplemented
        return ExactTime({r: q * factor for r, q in self.terms})

    __rmul__ = __mul__

    # ----------------------------------------------------------------------------------------------- compare
    def sign(self) -> int:
        """The exact sign (−1, 0 or 1)."""
        if not self.terms:
            return 0
        if abs(self.approx) > 8 * _NEAR * self.magnitude:
            return 1 if self.approx > 0 else -1
        if len(self.terms) == 1:
            return 1 if self.terms[0][1] > 0 else -1
        # Non-zero by linear independence of square roots of distinct square-free integers. Scale to integer
        # coefficients a_k, then bound Σ a_k √r_k · 2^p between integers until the bound excludes 0.
        denominator = math.lcm(*(q.denominator for _, q in self.terms))
        coefficients = [(int(q * denominator), r) for r, q in self.terms]
        bits = 64
        while True:
            total = 0
            for a, r in coefficients:
                root = math.isqrt(a * a * r << (2 * bits))  # floor(|a| √r 2^p)
                total += root if a > 0 else -root
            if abs(total) > len(coefficients):  # each floor errs by less than 1
                return 1 if total > 0 else -1
            bits *= 2

    def _compare(self, other: object) -> int:
        if isinstance(other, float) and math.isinf(other):  # every exact time is finite
            return -1 if other > 0 else 1
        other = _coerce(other)
        if other is None:
            raise TypeError("ExactTime compares only with ExactTime, int, Fraction or float")
        difference = self.approx - other.approx
        if abs(difference) > _NEAR * (self.magnitude + other.magnitude):
            return 1 if difference > 0 else -1
        if self.terms == other.terms:
            return 0
        return (self - other).sign()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (ExactTime, int, Fraction, float)) or isinstance(other, bool):
            return NotImplemented
        return self._compare(other) == 0

    def __lt__(self, other: object) -> bool:
        return self._compare(other) < 0

    def __le__(self, other: object) -> bool:
        return self._compare(other) <= 0

    def __gt__(self, other: object) -> bool:
        return self._compare(other) > 0

    def __ge__(self, other: object) -> bool:
        return self._compare(other) >= 0

    def __hash__(self) -> int:
        return hash(self.terms)

    # ------------------------------------------------------------------------------------------- conversion
    def __float__(self) -> float:
        return self.approx

    def __reduce__(self):
        return (ExactTime, (dict(self.terms),))

    def __repr__(self) -> str:
        return f"ExactTime({self})"

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for r, q in self.terms:
            parts.append(str(q) if r == 1 else (f"√{r}" if q == 1 else f"{q}·√{r}"))
        return " + ".join(parts)


def _coerce(value: object) -> "ExactTime | None":
    """``value`` as an ExactTime (ints and Fractions as they are, floats as their decimals), or None."""
    if isinstance(value, ExactTime):
        return value
    if isinstance(value, (int, Fraction, float)) and not isinstance(value, bool):
        return ExactTime.of(value)
    return None


ZERO = ExactTime({})
