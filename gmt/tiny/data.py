"""Text the tiny recipe is built from, generated here so nothing comes from a hub.

- Pretraining corpus: bare arithmetic, one equation a line ("23 + 45 = 68").
- SFT task: templated word problems whose answer is the equation and its result. The base model
  knows how to compute; fine-tuning has to teach it to read the problem, pick the numbers and the
  operation, and answer in the chat format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ana", "Ben", "Carla", "Dev", "Eva", "Farid", "Gita", "Hugo", "Ines", "Jon", "Kira", "Leo"]
ITEMS = ["apples", "marbles", "books", "coins", "cards", "stamps", "shells", "pencils", "eggs", "stickers"]
MAX_ADD = 99  # operands of + and - (results stay within 0..198)
MAX_MUL = 12  # operands of *


def equation(rng: random.Random) -> str:
    """One pretraining line: an arithmetic fact over the task's number ranges."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(0, MAX_MUL), rng.randint(0, MAX_MUL)
        return f"{a} * {b} = {a * b}"
    a, b = rng.randint(0, MAX_ADD), rng.randint(0, MAX_ADD)
    if op == "-":
        a, b = max(a, b), min(a, b)
        return f"{a} - {b} = {a - b}"
    return f"{a} + {b} = {a + b}"


def equation_probes(num_examples: int, seed: int) -> list[dict]:
    """What the base knows from pretraining, as a test: ``prompt`` ("23 + 45 =") and the integer
    ``answer``; scoring a fine-tuned model on them measures what it forgot."""
    rng = random.Random(seed)
    records = []
    for _ in range(num_examples):
        left, result = equation(rng).split(" = ")
        records.append({"prompt": f"{left} =", "answer": int(result)})
    return records


def pretraining_corpus(num_lines: int, seed: int = 0) -> list[str]:
    """``num_lines`` arithmetic facts."""
    rng = random.Random(seed)
    return [equation(rng) for _ in range(num_lines)]


@dataclass(frozen=True)
class WordProblem:
    question: str
    solution: str  # the assistant's reply: the equation, then "The answer is N."
    answer: int


_ADD = [
    "{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?",
    "There are {a} {item} in a box and {b} {item} on the table. How many {item} are there in all?",
    "{name} found {a} {item} on Monday and {b} {item} on Tuesday. How many {item} did {name} find?",
]
_SUB = [
    "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?",
    "A shop had {a} {item}. It sold {b} of them. How many {item} are left in the shop?",
    "{name} needs {a} {item} and already has {b}. How many more {item} does {name} need?",
]
_MUL = [
    "{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?",
    "There are {a} rows of {item} with {b} {item} in each row. How many {item} are there?",
]


def word_problem(rng: random.Random) -> WordProblem:
    """One SFT example."""
    op = rng.choice("+-*")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if op == "*":
        a, b = rng.randint(2, MAX_MUL), rng.randint(2, MAX_MUL)
        template, answer = rng.choice(_MUL), a * b
    elif op == "-":
        a, b = sorted((rng.randint(1, MAX_ADD), rng.randint(1, MAX_ADD)), reverse=True)
        template, answer = rng.choice(_SUB), a - b
    else:
        a, b = rng.randint(1, MAX_ADD), rng.randint(1, MAX_ADD)
        template, answer = rng.choice(_ADD), a + b
    question = template.format(name=name, item=item, a=a, b=b)
    return WordProblem(question, f"{a} {op} {b} = {answer}. The answer is {answer}.", answer)


_TWO_STEP = [  # (template, first operation, second operation)
    ("{name} has {a} {item}, gets {b} more and then gives away {c}. How many {item} does {name} have now?", "+", "-"),
    ("{name} buys {a} bags with {b} {item} in each bag and loses {c} of them. How many {item} are left?", "*", "-"),
    ("A shop had {a} {item}, sold {b} of them and then got {c} new ones. How many {item} does it have now?", "-", "+"),
    (
        "There are {a} rows of {item} with {b} in each row, and {c} more on a shelf. How many {item} are there?",
        "*",
        "+",
    ),
]
_APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def two_step_problem(rng: random.Random) -> WordProblem:
    """The comparison's second task: two operations in a row, the reply shows both equations."""
    template, first, second = rng.choice(_TWO_STEP)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if first == "*":
        a, b = rng.randint(2, MAX_MUL), rng.randint(2, MAX_MUL)
    elif first == "-":
        a, b = sorted((rng.randint(2, MAX_ADD), rng.randint(1, MAX_ADD)), reverse=True)
    else:
        a, b = rng.randint(1, MAX_ADD), rng.randint(1, MAX_ADD)
    middle = _APPLY[first](a, b)  # >= 2 where a subtraction follows (after + or *): results stay >= 0
    c = rng.randint(1, middle) if second == "-" else rng.randint(1, MAX_ADD // 2)
    answer = _APPLY[second](middle, c)
    question = template.format(name=name, item=item, a=a, b=b, c=c)
    solution = f"{a} {first} {b} = {middle}. {middle} {second} {c} = {answer}. The answer is {answer}."
    return WordProblem(question, solution, answer)


def sft_records(num_examples: int, seed: int, problem_of=word_problem) -> list[dict]:
    """Conversational SFT records (``messages``) plus the integer ``answer`` for scoring; the
    problems from ``problem_of`` (the word problems, or ``two_step_problem``)."""
    rng = random.Random(seed)
    records = []
    for _ in range(num_examples):
        problem = problem_of(rng)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": problem.question},
                    {"role": "assistant", "content": problem.solution},
                ],
                "answer": problem.answer,
            }
        )
    return records


def _wrong_solution(problem: WordProblem, rng: random.Random) -> str:
    """A plausible wrong reply: the wrong operation, or a final answer that does not follow."""
    equation, _ = problem.solution.split(". The answer is ")
    left, result = equation.split(" = ")
    a, op, b = left.split(" ")
    if rng.random() < 0.5:
        wrong_op = {"+": "-", "-": "+", "*": "+"}[op]
        x, y = int(a), int(b)
        value = {"+": x + y, "-": x - y, "*": x * y}[wrong_op]
        return f"{a} {wrong_op} {b} = {value}. The answer is {value}."
    wrong = int(result) + rng.choice([-1, 1]) * rng.randint(1, 10)
    return f"{left} = {wrong}. The answer is {wrong}."


def preference_records(num_examples: int, seed: int) -> list[dict]:
    """Conversational DPO records on the SFT task: ``prompt``, ``chosen`` (the right reply),
    ``rejected`` (a wrong one), plus the integer ``answer``."""
    rng = random.Random(seed)
    records = []
    for _ in range(num_examples):
        problem = word_problem(rng)
        records.append(
            {
                "prompt": [{"role": "user", "content": problem.question}],
                "chosen": [{"role": "assistant", "content": problem.solution}],
                "rejected": [{"role": "assistant", "content": _wrong_solution(problem, rng)}],
                "answer": problem.answer,
            }
        )
    return records
