"""Every strategy by its ``mask_strategy`` name, and what is derived from their declarations.

Adding a strategy: one module in ``gmt/masking/strategies/`` (a ``MaskStrategy`` subclass that
declares its name, summary, options and default frozen/dense parameters) and one line in
``BUILT_IN`` below. Its options then appear in every trainer config and on the command line,
with their help, defaults and range checks (``gmt.config``). Code outside the package can add
one with ``register_strategy``, before ``gmt.config`` is imported.
"""

from __future__ import annotations

from typing import Any

from gmt.masking.base import MaskStrategy
from gmt.masking.options import COMMON_OPTIONS, Option
from gmt.masking.strategies.full import FullStrategy
from gmt.masking.strategies.gps import GPSStrategy
from gmt.masking.strategies.gradient_mask import GMTStrategy
from gmt.masking.strategies.grft import GRFTStrategy
from gmt.masking.strategies.gspf import GSPFStrategy
from gmt.masking.strategies.magnitude import MagnitudeStrategy
from gmt.masking.strategies.random_mask import RandomStrategy

BUILT_IN: tuple[type[MaskStrategy], ...] = (
    GMTStrategy,
    FullStrategy,
    RandomStrategy,
    MagnitudeStrategy,
    GPSStrategy,
    GRFTStrategy,
    GSPFStrategy,
)

STRATEGIES: dict[str, type[MaskStrategy]] = {}
_sealed_by: str | None = None  # set once the config classes are built from the registry


def register_strategy(cls: type[MaskStrategy]) -> type[MaskStrategy]:
    """Add ``cls`` under ``cls.name`` (usable as a class decorator). Each option name must be
    declared by one ``Option`` only, shared by inheritance where several strategies take it."""
    if _sealed_by is not None:
        raise RuntimeError(
            f"register_strategy({cls.__name__}) after {_sealed_by} was imported: the config classes are built from "
            "the registry on import, so register strategies before importing it"
        )
    if not cls.name or cls.name in STRATEGIES:
        raise ValueError(f"a strategy needs a name of its own; {cls.__name__} has {cls.name!r}")
    reserved = {option.name for option in COMMON_OPTIONS} | {"mask_strategy"}
    known = {option.name: option for option in strategy_options()}
    for option in cls.declared_options():
        if option.name in reserved or known.get(option.name, option) is not option:
            raise ValueError(f"strategy {cls.name!r}: option {option.name} is declared elsewhere already")
    STRATEGIES[cls.name] = cls
    return cls


def seal_registry(by: str) -> None:
    """Refuse later registrations: ``by`` (a module name) has built its classes from the registry."""
    global _sealed_by
    _sealed_by = by


def strategy_class(mask_strategy: str) -> type[MaskStrategy]:
    """The class registered as ``mask_strategy``."""
    if mask_strategy not in STRATEGIES:
        raise ValueError(f"mask_strategy must be one of {sorted(STRATEGIES)}, got {mask_strategy!r}")
    return STRATEGIES[mask_strategy]


def strategy_options() -> list[Option]:
    """Every strategy option, once each, in registration order."""
    options: dict[str, Option] = {}
    for cls in STRATEGIES.values():
        for option in cls.declared_options():
            options.setdefault(option.name, option)
    return list(options.values())


def strategies_taking(option_name: str) -> list[str]:
    """The names of the strategies that declare ``option_name``."""
    return [name for name, cls in STRATEGIES.items() if any(o.name == option_name for o in cls.declared_options())]


def build_strategy(mask_strategy: str, **options: Any) -> MaskStrategy:
    """The strategy named ``mask_strategy`` with ``options`` (the rest at their declared defaults)."""
    return strategy_class(mask_strategy)(**options)


def resolve_strategy_options(args: Any) -> None:
    """Check and complete the strategy options of parsed arguments, in place.

    An option left unset (None) takes its declared default when ``args.mask_strategy`` declares
    it, and stays None otherwise; an option the user set for a strategy that does not take it is
    refused, naming the option and the strategies that do.
    """
    cls = strategy_class(args.mask_strategy)
    own = {option.name for option in cls.declared_options()}
    for option in strategy_options():
        value = getattr(args, option.name)
        if option.name in own:
            if value is None:
                setattr(args, option.name, option.default)
        elif value is not None:
            users = " or ".join(repr(name) for name in strategies_taking(option.name))
            raise ValueError(f"{option.name} applies to mask_strategy {users} only; mask_strategy is {cls.name!r}")


def effective_frozen_params(args: Any) -> str:
    """The ``frozen_params`` pattern in force: the user's, or the strategy's default ("" = none)."""
    if args.frozen_params is not None:
        return args.frozen_params
    return strategy_class(args.mask_strategy).default_frozen_params


for _strategy in BUILT_IN:
    register_strategy(_strategy)
