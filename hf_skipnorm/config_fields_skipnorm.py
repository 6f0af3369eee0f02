"""Validation as data: the kinds of field spec that `SkipNormConfig`'s table is written in, the one validator that
reads the table, and the registry of cross-field rules.

The table itself (`FIELDS`) and the rules live in `configuration_skipnorm.py`, beside the vocabularies they check.
This module knows nothing about SkipNorm: it turns a spec and a value into "valid" or a `ValueError` that names
the field, the bad value and what is valid, with the spec's reason. It imports no torch.

How to add a field: declare it on `SkipNormConfig` (annotation, default, a docstring line with reason and citation),
then add ONE row to `FIELDS`: ``Field("name", Int(1, 64), "why the range", "citation")``; the kinds are `Int`,
`Float`, `Bool`, `Choice` and `Check` (any function ``check(name, value, config)`` for a structured value).
`tests/test_configuration.py` fails if a declared field has no row.

How to add a cross-field rule: write ``def rule_name(config, layers)`` next to the vocabulary it guards, raise
``ValueError`` (via `refuse`) naming every field involved, their values and the valid choices, and decorate it with
``@rule``. Rules run in registration order after every row passed, so a rule may rely on the types and bounds of
single fields (`layers` is the list of resolved (attention, MLP) placements, one per layer).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

# float32's largest finite value: a constant that scales activations or weights must survive the cast to float32.
FLOAT32_MAX = 3.4028234663852886e38
# float16's largest finite value and smallest normal: a constant multiplied into activations (a multiplier, an init
# gain, a DyT alpha) must stay finite, and a divisor (a softcap) must stay non-zero, in every dtype the model runs in.
FLOAT16_MAX = 65504.0
FLOAT16_TINY = 6.103515625e-05


def refuse(field: str, value: Any, expected: str, why: str = "") -> ValueError:
    """The one message shape: ``SkipNormConfig.<field>=<value> is not valid (<why>); expected <expected>``."""
    reason = f" ({why})" if why else ""
    return ValueError(f"SkipNormConfig.{field}={value!r} is not valid{reason}; expected {expected}")


def choice_error(field: str, value: Any, choices: tuple[str, ...], why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(f"SkipNormConfig.{field}={value!r} is not valid{reason}; valid choices: {', '.join(choices)}")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _bool_hint(value: Any) -> str:
    return " (a string is not a boolean: write true/false in JSON, True/False in Python)" if isinstance(value, str) else ""


class Int(NamedTuple):
    """An integer in ``[low, high]`` (booleans and floats refused); `optional` also allows None."""

    low: int
    high: int
    optional: bool = False

    def check(self, name: str, value: Any, config: Any, why: str) -> None:
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            expected = f"an integer in [{self.low}, {self.high:,}]" + (" or None" if self.optional else "")
            raise refuse(name, value, expected, why)


class Float(NamedTuple):
    """A finite number in ``low <= x <= high`` (``low < x`` if `open_low`, ``x < high`` if `open_high`)."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    optional: bool = False

    def check(self, name: str, value: Any, config: Any, why: str) -> None:
        if value is None and self.optional:
            return
        ok = _is_number(value) and math.isfinite(value)
        if ok:
            ok = (value > self.low if self.open_low else value >= self.low) and (
                value < self.high if self.open_high else value <= self.high)
        if not ok:
            interval = f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
            expected = f"a finite float in {interval}" + (" or None" if self.optional else "")
            raise refuse(name, value, expected, why)


class Bool(NamedTuple):
    """True or False (a string such as "False" is refused, not read as truthy); `optional` also allows None."""

    optional: bool = False

    def check(self, name: str, value: Any, config: Any, why: str) -> None:
        if value is None and self.optional:
            return
        if not isinstance(value, bool):
            expected = "True, False or None" if self.optional else "True or False"
            raise refuse(name, value, expected + _bool_hint(value), why)


class Choice(NamedTuple):
    """One string of `choices` (a tuple, or a function returning one, read at validation time)."""

    choices: tuple[str, ...] | Callable[[], tuple[str, ...]]
    optional: bool = False

    def check(self, name: str, value: Any, config: Any, why: str) -> None:
        if value is None and self.optional:
            return
        choices = self.choices() if callable(self.choices) else self.choices
        if not isinstance(value, str) or value not in choices:
            raise choice_error(name, value, choices + (("None",) if self.optional else ()), why)


class Check(NamedTuple):
    """A structured value checked by ``function(name, value, config)``, which raises the ValueError itself."""

    function: Callable[[str, Any, Any], None]

    def check(self, name: str, value: Any, config: Any, why: str) -> None:
        self.function(name, value, config)


class Field(NamedTuple):
    """One row of the table: the field, its kind and range, why that range, and where the value comes from."""

    name: str
    spec: Int | Float | Bool | Choice | Check
    why: str = ""
    cite: str = ""


# (config, layers) -> None, raising ValueError. Filled by @rule in configuration_skipnorm.py, run in order.
RULES: list[Callable[[Any, list], None]] = []


def rule(function: Callable[[Any, list], None]) -> Callable[[Any, list], None]:
    """Register a cross-field rule (see the module docstring); returns the function unchanged. Registering a
    function of the same name again (a module reload) replaces it rather than running it twice."""
    key = (function.__module__, function.__qualname__)
    RULES[:] = [known for known in RULES if (known.__module__, known.__qualname__) != key]
    RULES.append(function)
    return function


def validate(config: Any, fields: tuple[Field, ...], layers_of: Callable[[Any], list]) -> None:
    """Check every row on `config`, then every rule on (config, layers). Rows first: sizes are bounded before any
    rule loops over layers."""
    for row in fields:
        row.spec.check(row.name, getattr(config, row.name), config, row.why)
    layers = layers_of(config)
    for check in RULES:
        check(config, layers)
