"""A monthly LLM token budget per user, kept with reservations.

    KARMA_URL=karma://127.0.0.1:8080 python examples/llm_budget.py USER PROMPT [--budget N] [--fail]

Before a model call the worst case (the prompt's tokens plus the most the model may answer) is
reserved against the user's budget for this calendar month; when the call returns, the tokens
it really used are committed and the rest of the hold is released; if the call fails, the hold
is voided and nothing is charged. A hold counts against the budget from the moment it is
granted, so calls running at the same time cannot overspend it together — as a check-then-call
can (five LiteLLM requests spent 663 tokens of a 100-token limit: BerriAI/litellm #18730).
If this process dies mid-call, the hold expires after `HOLD_TTL_S` and frees its tokens.

`--fail` makes the stand-in model fail, to show the void. Exit status: 0 answered, 1 the server
refused, 2 bad arguments, 3 over budget, 4 the model call failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from karma.client import Client, KarmaError, LimitAnswer

SERIES = "llm_tokens"
MONTH = {"calendar": "month"}
DEFAULT_BUDGET = 50_000
MAX_OUTPUT_TOKENS = 512
HOLD_TTL_S = 120  # longer than any model call; a crashed caller's hold goes after this


class OverBudgetError(Exception):
    def __init__(self, answer: LimitAnswer) -> None:
        super().__init__("over budget")
        self.answer = answer


class ModelError(Exception):
    pass


def count_tokens(text: str) -> int:
    return len(text.split())  # a real app uses its model's tokenizer


def call_model(prompt: str, max_tokens: int, *, fail: bool) -> tuple[str, int]:
    """A stand-in for an LLM API: the reply and the tokens billed for prompt and reply."""
    if fail:
        raise ModelError("the model did not answer")
    reply = " ".join(reversed(prompt.split()))[: max_tokens * 4]
    return reply, count_tokens(prompt) + count_tokens(reply)


def ask(karma: Client, user: int, prompt: str, budget: int, *, fail: bool = False) -> str:
    worst_case = count_tokens(prompt) + MAX_OUTPUT_TOKENS
    with karma.reserve(
        SERIES, user, worst_case, max=budget, window=MONTH, ttl_s=HOLD_TTL_S
    ) as hold:
        if not hold.allowed:
            raise OverBudgetError(hold.answer)
        reply, used = call_model(prompt, MAX_OUTPUT_TOKENS, fail=fail)  # raises: hold voided
        hold.actual = used  # committed when the block ends
    return reply


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="llm_budget.py")
    parser.add_argument("user", type=int)
    parser.add_argument("prompt")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="tokens a month")
    parser.add_argument("--fail", action="store_true", help="make the model call fail")
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad arguments
    if not args.prompt.split():
        parser.error("the prompt is empty")
    with Client.from_env(timeout=10) as karma:
        try:
            reply = ask(karma, args.user, args.prompt, args.budget, fail=args.fail)
            now = karma.check(SERIES, args.user, 0, max=args.budget, window=MONTH).items[0]
        except OverBudgetError as over:
            item = over.answer.items[0]
            print(
                f"user {args.user}: over budget: {item.value} tokens needed, {item.remaining}"
                f" of {item.max} left this month; retry in {over.answer.retry_after_s} s",
                file=sys.stderr,
            )
            return 3
        except ModelError as exc:
            print(f"user {args.user}: {exc}; nothing was charged", file=sys.stderr)
            return 4
        except KarmaError as exc:
            print(f"llm_budget: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
    print(reply)
    print(
        f"user {args.user}: {now.used} of {now.max} tokens used this month ({now.remaining} left)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
