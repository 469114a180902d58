"""gmt's command line: TRL's ``TrlParser`` (``--config x.yaml`` plus ``--name value`` overrides), with
what a user of a gmt recipe needs on top:

- a setting that does not exist, in the YAML or on the command line, is refused before anything
  is built, with the closest real name ("did you mean mask_ratio?");
- ``--mask_strategy X`` on the command line switches strategies: the recipe's options for another
  strategy (a gmt recipe's ``mask_ratio`` under ``--mask_strategy gps``) are left out, and the run
  says which. An option given on the command line is never left out: set for a strategy that does
  not take it, it is refused as before;
- ``--eval_suite none`` on the command line likewise leaves out the recipe's ``eval_args`` and
  ``eval_limit`` (settings of the scoring it switches off), and says so;
- ``--help`` shows gmt's own settings first, above TRL's and transformers' hundreds.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Iterable

from trl import ModelConfig, ScriptArguments, TrlParser

from gmt.launch import is_main_launched_process, launched_rank
from gmt.masking.registry import STRATEGIES, strategy_options
from gmt.resources import recipe_path

SCORING_OPTIONS = ("eval_args", "eval_limit")  # what eval_suite's scoring takes besides the suite
# Settings that older transformers/TRL took under another name: refused with the name they have now.
RENAMED = {
    "warmup_ratio": "warmup_steps (a value below 1 is a ratio of the run's steps)",
    "torch_dtype": "dtype",
    "evaluation_strategy": "eval_strategy",
    "max_seq_length": "max_length",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
}


class GMTParser(TrlParser):
    """``TrlParser`` over gmt's argument dataclasses (see the module docstring)."""

    def __init__(self, dataclass_types, **kwargs) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.allow_abbrev = False  # argparse would take --learning_rat as --learning_rate without a word
        self._command_line: dict[str, str | None] = {}
        self._fail_with_unknown = True
        self._group_gmt_settings(dataclass_types)
        # The usage line would list every option (hundreds of lines before gmt's settings).
        self.usage = "%(prog)s --config RECIPE.yaml [--setting value ...]   (gmt's settings first below)"

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ):
        launched_rank()  # a RANK that is not a number is named here, before accelerate reads it
        args = list(args) if args is not None else sys.argv[1:]
        self._command_line = _flags(args)
        if "--config" in args and args.index("--config") + 1 < len(args):
            at = args.index("--config") + 1
            args[at] = str(recipe_path(args[at]))  # recipes/... from outside a clone: the installed package's
            refuse_repeated_keys(args[at])
        self._fail_with_unknown = fail_with_unknown_args and not return_remaining_strings
        return super().parse_args_and_config(
            args, return_remaining_strings, fail_with_unknown_args, separate_remaining_strings
        )

    def set_defaults_with_config(self, **config) -> list[str]:
        """The YAML's values as defaults: unknown keys refused with a suggestion, and the options
        of another strategy left out when the command line switches ``mask_strategy``."""
        known = {action.dest for action in self._actions}
        unknown = [key for key in config if key not in known]
        if unknown and self._fail_with_unknown:
            raise ValueError("; ".join(f"unknown setting {key!r} in the --config file{_suggestion(key, known)}"
                                     for key in unknown))  # fmt: skip
        config = self._without_scoring_options(self._without_other_strategies_options(config))
        integers = {action.dest for action in self._actions if action.type is int}
        for key, value in config.items():  # the Trainer would fail on it after the model loads
            if key in integers and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{key} in the --config file must be a whole number, got {value!r}")
        return super().set_defaults_with_config(**config)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        if not return_remaining_strings:  # before the dataclasses are built (their checks would speak first)
            _, remaining = self.parse_known_args(args=args)
            flags = [text.split("=", 1)[0] for text in remaining if text.startswith("--")]
            if flags:
                known = {option for action in self._actions for option in action.option_strings}
                raise ValueError("; ".join(f"unknown setting {flag}{_suggestion(flag, known)}" for flag in flags))
        return super().parse_args_into_dataclasses(args=args, return_remaining_strings=return_remaining_strings,
                                                   **kwargs)  # fmt: skip

    def _without_other_strategies_options(self, config: dict) -> dict:
        switched_to = self._command_line.get("mask_strategy")
        if switched_to not in STRATEGIES or switched_to == config.get("mask_strategy"):
            return config
        own = {option.name for option in STRATEGIES[switched_to].declared_options()}
        others = {option.name for option in strategy_options()} - own
        left_out = [key for key in config if key in others and key not in self._command_line]
        if left_out and is_main_launched_process():
            settings = ", ".join(f"{key}: {config[key]!r}" for key in left_out)
            recipe_strategy = config.get("mask_strategy", "gmt")
            print(f"--mask_strategy {switched_to}: the --config file's {settings} (options of mask_strategy "
                  f"{recipe_strategy!r}, not of {switched_to!r}) are left out", flush=True)  # fmt: skip
        return {key: value for key, value in config.items() if key not in left_out}

    def _without_scoring_options(self, config: dict) -> dict:
        if self._command_line.get("eval_suite") != "none" or config.get("eval_suite") in (None, "none"):
            return config
        left_out = [key for key in SCORING_OPTIONS if key in config and key not in self._command_line]
        if left_out and is_main_launched_process():
            settings = ", ".join(f"{key}: {config[key]!r}" for key in left_out)
            print(f"--eval_suite none: the --config file's {settings} (settings of its eval_suite "
                  f"{config['eval_suite']!r}) are left out", flush=True)  # fmt: skip
        return {key: value for key, value in config.items() if key not in left_out}

    def _group_gmt_settings(self, dataclass_types) -> None:
        """Move gmt's own settings into argument groups shown first by ``--help``."""
        from gmt.config import MaskArguments

        script_own = set()
        for cls in dataclass_types:
            if isinstance(cls, type) and issubclass(cls, ScriptArguments) and not issubclass(cls, ModelConfig):
                inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                             for f in dataclasses.fields(base)}  # fmt: skip
                script_own |= {f.name for f in dataclasses.fields(cls)} - inherited
        groups = [("gradient masking (gmt)", {f.name for f in dataclasses.fields(MaskArguments)}),
                  ("data and evaluation (gmt)", script_own)]  # fmt: skip
        new_groups = []
        for title, names in groups:
            group = self.add_argument_group(title)
            for container in self._action_groups:
                if container is group:
                    continue
                moving = [action for action in container._group_actions if action.dest in names]
                for action in moving:
                    container._group_actions.remove(action)
                    group._group_actions.append(action)
            new_groups.append(group)
        rest = [group for group in self._action_groups if group not in new_groups]
        self._action_groups[:] = new_groups + rest


def refuse_repeated_keys(config_file: str) -> None:
    """Refuse a YAML recipe that gives one key twice in the same mapping (YAML loaders keep the
    last without a word), naming the key and both lines."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                lines = f"lines {seen[key] + 1} and {key_node.start_mark.line + 1}"
                raise ValueError(f"{config_file}: the setting {key!r} is given twice ({lines}); YAML would keep the "
                                 "last without a word")  # fmt: skip
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        with open(config_file) as file:
            yaml.load(file, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except (OSError, yaml.YAMLError):
        return  # TrlParser reports a missing or malformed file itself


def _flags(args: list[str]) -> dict[str, str | None]:
    """The settings named on the command line (``--name value`` or ``--name=value``), with the
    value that follows each (None for a bare flag)."""
    flags: dict[str, str | None] = {}
    for index, text in enumerate(args):
        if not text.startswith("--") or " " in text:
            continue
        name, sep, value = text[2:].partition("=")
        following = args[index + 1] if index + 1 < len(args) else None
        if following is not None and following.startswith("--"):
            following = None
        flags[name] = value if sep else following
    return flags


def _suggestion(name: str, known: set[str]) -> str:
    bare = name.lstrip("-")
    if bare in RENAMED:
        return f" (renamed: use {RENAMED[bare]})"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
