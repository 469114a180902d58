"""The design rules docs/design.md states, checked: one set of defaults, no import cycles, the
registry sealed once the configs are built, dependency floors that match the private APIs used."""

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch

from gmt.config import GMTDPOConfig, GMTSFTConfig
from gmt.masking import STRATEGIES, MaskStrategy, build_strategy, register_strategy, strategy_class

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The gmt modules ``path`` imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gmt"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & known  # submodules named
    return found & known


def test_no_import_cycles_inside_gmt():
    paths = {module_name(path): path for path in (REPO / "gmt").rglob("*.py")}
    graph = {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


@pytest.mark.parametrize("config_cls", [GMTSFTConfig, GMTDPOConfig])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_one_set_of_defaults(config_cls, name):
    # The config, from_args and build_strategy give every option the value its declaration says.
    config = config_cls(output_dir="unused", bf16=False, mask_strategy=name, optim="adamw_torch")
    from_config, direct = strategy_class(name).from_args(config), build_strategy(name)
    for option in strategy_class(name).declared_options():
        values = (getattr(config, option.name), getattr(from_config, option.name), getattr(direct, option.name))
        assert values == (option.default,) * 3, option.name
    assert from_config.dense_params == direct.dense_params == strategy_class(name).default_dense_params


def test_every_option_is_declared_once():
    declared: dict[str, object] = {}
    for cls in STRATEGIES.values():
        for option in cls.declared_options():
            assert declared.setdefault(option.name, option) is option, option.name
            option.check(option.default)  # each default is valid by its own declaration


def test_registering_after_the_configs_are_built_is_refused():
    class LateStrategy(MaskStrategy):
        name = "late"

        def select(self, grads, step):
            return None

    with pytest.raises(RuntimeError, match="register strategies before importing it"):
        register_strategy(LateStrategy)
    assert "late" not in STRATEGIES


def floor(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([\d.]+)", requirement)
    return tuple(int(part) for part in match.group(1).split("."))


def test_torch_floor_is_where_adamw_init_group_got_the_signature_maskedadamw_calls():
    # torch 2.7 made AdamW a subclass of Adam: AdamW._init_group is Adam's, 7 arguments after self.
    # 2.6's own AdamW._init_group took amsgrad as well, so MaskedAdamW cannot run on torch < 2.7.
    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_requirement,) = [dep for dep in dependencies if re.match(r"torch\b", dep)]
    assert floor(torch_requirement) >= (2, 7)
    parameters = list(inspect.signature(torch.optim.AdamW._init_group).parameters)
    assert parameters == ["self", "group", "params_with_grad", "grads", "exp_avgs", "exp_avg_sqs",
                          "max_exp_avg_sqs", "state_steps"]  # fmt: skip
    assert issubclass(torch.optim.AdamW, torch.optim.Adam)
