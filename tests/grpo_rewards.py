"""A reward for the GRPO tests, named by its dotted path (``tests.grpo_rewards.longer_is_better``)
as a recipe names its own: rewards that differ within every group of an untrained tiny model's
completions, so that each step has an advantage to follow."""


from gmt.rewards import completion_text


def longer_is_better(completions, **_) -> list[float]:
    """The completion's length in characters."""
    return [float(len(completion_text(completion))) for completion in completions]
