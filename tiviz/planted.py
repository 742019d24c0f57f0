"""Planted-cue preference pairs: a benchmark where the deciding tokens are known by construction.

Each pair's two responses are long (about 60-150 tokens) and identical except for two short spans at random
positions: the *cue*, which decides the label (a correct against a wrong number or fact, a polite against a rude
phrase, a safe against an unsafe instruction, the two lengths matched in tokens), and a *distractor* (a name, a
colour or a city drawn at random for each side, independently of the label). A text diff finds both spans and
cannot tell which one decides; an attribution method that explains the preference must rank the cue first.

The cue's text is the pair's rationale (`rationale_chosen` / `rationale_rejected`, what `tiviz evaluate` scores
as plausibility); every span's exact character offsets are in `extra` (`cue_chosen`, `distractor_chosen`, ...).

    pairs = planted_pairs(400, seed=0)
    python -m tiviz.planted --n 400 --seed 0 --out data/planted     # train.jsonl + test.jsonl
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tiviz.data import PreferencePair, save_pairs
from tiviz.errors import ConfigError

log = logging.getLogger(__name__)

Span = tuple[int, int]

# Value pools. Every name, colour, city and capital is one token with its leading space in the default
# tokenizer (SmolLM2), and each phrase pair has the same token count on both sides
# (tests/integration/test_planted_tokens.py checks both), so likelihood is not a length count.
NAMES = ("Anna", "Maria", "Tom", "Oliver", "Sarah", "David", "Laura", "Peter", "Emma", "James", "Julia", "Daniel")
COLOURS = ("red", "blue", "green", "purple", "yellow", "orange", "black", "white")
CITIES = ("Chicago", "Boston", "Sydney", "Dallas", "Denver", "Seattle", "Houston", "Phoenix")
CAPITALS = (("France", "Paris"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Italy", "Rome"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Japan", "Tokyo"), ("Norway", "Oslo"),
            ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Ireland", "Dublin"),
            ("Poland", "Warsaw"), ("China", "Beijing"), ("England", "London"))
POLITE_RUDE = (
    ("thank you for your patience", "stop pestering us"),
    ("we are sorry for the delay", "this is simply not our problem"),
    ("please accept our apologies", "quit whining about it"),
    ("we appreciate your kind message", "your complaint is pathetic"),
    ("we truly value your feedback", "nobody cares about your feedback"),
    ("we are glad you wrote to us", "we are tired of your moaning"),
)
SAFE_UNSAFE = (
    ("replace a light switch", "switch off the power at the breaker", "leave the power on while you work"),
    ("sand an old painted door", "wear safety goggles and gloves", "skip the goggles and gloves"),
    ("strip varnish with a solvent", "open a window for fresh air", "close all windows and doors tightly"),
    ("put out a small pan fire", "cover the pan with a lid", "throw cold water onto the pan"),
    ("clean a bathroom with bleach", "read the label before mixing", "mix bleach with ammonia freely"),
    ("use a ladder on the stairs", "ask someone to hold the ladder", "balance the ladder on a box"),
)
DISTRACTORS = {
    "name": ("My colleague {} checked these notes yesterday.", NAMES),
    "colour": ("I keep these tips in my {} notebook.", COLOURS),
    "city": ("I learned this during a course in {}.", CITIES),
}


@dataclass(frozen=True)
class Template:
    """One kind of planted pair: its filler sentences and the distractor kinds it may use."""

    name: str
    fillers: tuple[str, ...]
    distractor_kinds: tuple[str, ...] = ("name", "colour", "city")


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("arithmetic", (
        "Adding the two amounts gives the total for the whole day.",
        "It helps to write both amounts down before adding them.",
        "Farmers often count their harvest twice to be sure.",
        "The morning batch is usually picked before the sun gets hot.",
        "The afternoon batch goes straight to the market stall.",
        "Counting in groups of ten makes the sum easier to check.",
        "You can also count on your fingers if the numbers are small.",
        "A quick check is to add the amounts in the other order.",
        "The answer does not depend on which batch you count first.",
        "Melons keep well in a cool and dry shed.",
        "Keeping a simple tally sheet avoids mistakes at the end.",
        "This is the kind of sum that comes up in everyday shopping.",
    )),
    Template("fact", (
        "Capital cities are usually where the national government meets.",
        "Many visitors travel there to see its museums and old buildings.",
        "The capital is often, but not always, the largest city of a country.",
        "A good atlas lists the capital of every country in the world.",
        "Geography quizzes ask this question quite often.",
        "The city has been the seat of government for a long time.",
        "Its main railway station links it with the rest of the country.",
        "Parliament and several ministries have their offices there.",
        "You can confirm this in any encyclopedia or on an official map.",
        "The old town centre is a popular place for a walk.",
        "Embassies of other countries are found in the capital as well.",
        "School children learn the capitals of nearby countries early on.",
    ), ("name", "colour")),
    Template("politeness", (
        "Your message reached our customer service team this morning.",
        "We have looked up your order in our system.",
        "The parcel left our warehouse later than planned.",
        "Our courier had more deliveries than usual this week.",
        "We will send you a tracking link as soon as we have it.",
        "If anything is missing from the box, just reply to this email.",
        "You can also reach us by phone during office hours.",
        "We keep a record of every delivery to improve our service.",
        "A voucher for your next order is attached to this reply.",
        "Our team checks every complaint within two working days.",
        "The delivery address on your order looks correct.",
        "We hope the rest of your order is in good condition.",
    )),
    Template("safety", (
        "This is a job most people can do at home in an afternoon.",
        "Gather all the tools you need before you begin.",
        "Work slowly and keep the area around you tidy.",
        "Read the instructions that came with your materials.",
        "Good light makes the job easier and safer.",
        "Keep pets and small children out of the room while you work.",
        "Take a short break if you start to feel tired.",
        "Clean up carefully once the work is finished.",
        "A helper can hand you tools and keep an eye on things.",
        "If you are unsure at any point, ask a professional for advice.",
        "Store leftover materials somewhere cool and dry.",
        "Check your work once more before you call it done.",
    )),
)}


def planted_pairs(n: int, seed: int = 0, template: str | Sequence[str] | None = None,
                  fillers: tuple[int, int] = (5, 10)) -> list[PreferencePair]:
    """`n` planted-cue pairs, the same for the same arguments; templates take turns.

    Args:
        n: number of pairs (>= 1).
        seed: random seed; pair i depends only on (seed, i, its template, fillers).
        template: one template name, several, or None for all of `TEMPLATES`.
        fillers: (fewest, most) filler sentences around the cue and the distractor; the default (5, 10) gives
            responses of about 65-140 tokens, (1, 3) short ones (about 25-55 tokens) for cheap training.
    Returns:
        pairs whose rationale is the cue text of each side (it occurs exactly once in its response); `extra` holds
        template, cue / distractor character spans per side, the correct and wrong cue values, and the distractor
        kind and values.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError("n", n, "an integer >= 1")
    names = list(TEMPLATES) if template is None else [template] if isinstance(template, str) else list(template)
    for name in names:
        if name not in TEMPLATES:
            raise ConfigError("template", name, ", ".join(map(repr, TEMPLATES)))
    if not names:
        raise ConfigError("template", template, "at least one of " + ", ".join(map(repr, TEMPLATES)))
    lo, hi = fillers
    if not 0 <= lo <= hi <= min(len(t.fillers) for t in TEMPLATES.values()):
        raise ConfigError("fillers", fillers, "(fewest, most) with 0 <= fewest <= most <= 12")
    return [_pair(i, TEMPLATES[names[i % len(names)]], random.Random(f"planted/{seed}/{i}"), (lo, hi))
            for i in range(n)]


def split_pairs(pairs: Sequence[PreferencePair], test_fraction: float = 0.25) -> tuple[list[PreferencePair],
                                                                                        list[PreferencePair]]:
    """(train, test): within each template every k-th pair goes to test (k = round(1 / test_fraction)), so both
    splits hold every template in the same proportions."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", test_fraction, "a number in (0, 1)")
    k = max(2, round(1.0 / test_fraction))
    seen: Counter[str] = Counter()
    train: list[PreferencePair] = []
    test: list[PreferencePair] = []
    for p in pairs:
        key = str(p.extra.get("template", ""))
        (test if seen[key] % k == k - 1 else train).append(p)
        seen[key] += 1
    return train, test


# ---------------------------------------------------------------------------------------------- one pair


def _cue(template: str, rng: random.Random) -> tuple[str, str, str, str]:
    """(prompt, sentence with '{}' where the cue goes, correct cue, wrong cue) for one pair."""
    if template == "arithmetic":
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        total = a + b
        # a wrong total with the same number of digits (same token count: digits are single tokens), above or below
        # the right one by a fair coin so the size of the number does not give the label away
        options = [w for w in range(total - 9, total + 10) if w != total and w > 0 and len(str(w)) == len(str(total))]
        above = [w for w in options if w > total]
        below = [w for w in options if w < total]
        wrong = rng.choice(above if (rng.random() < 0.5 and above) or not below else below)
        prompt = f"A farmer picks {a} melons in the morning and {b} melons in the afternoon. How many melons is that?"
        return prompt, "Altogether the farmer picked {} melons today.", str(total), str(wrong)
    if template == "fact":
        (country, city), (_, other) = rng.sample(CAPITALS, 2)
        return (f"What is the capital of {country}?", f"The capital of {country} is {{}}.", city, other)
    if template == "politeness":
        polite, rude = rng.choice(POLITE_RUDE)
        return ("A customer writes that their parcel arrived a week late. Write a short reply to them.",
                "First of all, {}.", polite, rude)
    task, safe, unsafe = rng.choice(SAFE_UNSAFE)
    return f"How do I {task} at home?", "Before you begin, {}.", safe, unsafe


def _pair(i: int, template: Template, rng: random.Random, fillers: tuple[int, int]) -> PreferencePair:
    prompt, cue_sentence, correct, wrong = _cue(template.name, rng)
    kind = rng.choice(template.distractor_kinds)
    distractor_sentence, pool = DISTRACTORS[kind]
    d_chosen, d_rejected = rng.sample(pool, 2)  # two values, which side gets which independent of the label
    chosen_fillers = rng.sample(template.fillers, rng.randint(*fillers))
    slots = len(chosen_fillers) + 2
    cue_at, distractor_at = rng.sample(range(slots), 2)
    responses, spans = [], []
    for cue, value in ((correct, d_chosen), (wrong, d_rejected)):
        sentences = list(chosen_fillers)
        order = sorted([(cue_at, cue_sentence, cue), (distractor_at, distractor_sentence, value)])
        for at, sentence, _ in order:
            sentences.insert(at, sentence)
        text, cue_span, d_span = _join(sentences, cue_sentence, cue, distractor_sentence, value)
        responses.append(text)
        spans.append((cue_span, d_span))
    for text, cue in ((responses[0], correct), (responses[1], wrong)):
        # the rationale is matched as a substring: it must not also occur elsewhere (the pools keep it so)
        assert text.count(cue) == 1, f"planted cue {cue!r} occurs {text.count(cue)} times in {text!r}"
    return PreferencePair(
        id=f"planted-{template.name}-{i:04d}", prompt=prompt, chosen=responses[0], rejected=responses[1],
        rationale_chosen=(correct,), rationale_rejected=(wrong,),
        extra={"template": template.name, "distractor_kind": kind,
               "cue_chosen": list(spans[0][0]), "cue_rejected": list(spans[1][0]),
               "distractor_chosen": list(spans[0][1]), "distractor_rejected": list(spans[1][1]),
               "cue_correct": correct, "cue_wrong": wrong,
               "distractor_value_chosen": d_chosen, "distractor_value_rejected": d_rejected},
    )


def _join(sentences: list[str], cue_sentence: str, cue: str, distractor_sentence: str,
          value: str) -> tuple[str, Span, Span]:
    """The response text and the character spans of the cue and the distractor value in it."""
    parts: list[str] = []
    pos = 0
    cue_span = d_span = (-1, -1)
    for s in sentences:
        if parts:
            parts.append(" ")
            pos += 1
        if s in (cue_sentence, distractor_sentence):
            filled = s.format(cue if s == cue_sentence else value)
            start = pos + s.index("{}")
            span = (start, start + len(cue if s == cue_sentence else value))
            if s == cue_sentence:
                cue_span = span
            else:
                d_span = span
            s = filled
        parts.append(s)
        pos += len(s)
    return "".join(parts), cue_span, d_span


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tiviz.planted --n 400 --seed 0 --out DIR`: write DIR/train.jsonl and DIR/test.jsonl."""
    ap = argparse.ArgumentParser(prog="python -m tiviz.planted", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="pairs in all (default 400)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--template", default=None, help=f"comma-separated templates (default all: {', '.join(TEMPLATES)})")
    ap.add_argument("--fillers", default="5,10", help="fewest,most filler sentences per response (default 5,10)")
    ap.add_argument("--test-fraction", type=float, default=0.25, help="share of pairs in test.jsonl (default 0.25)")
    ap.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
    args = ap.parse_args(argv)
    lo, hi = (int(x) for x in args.fillers.split(","))
    pairs = planted_pairs(args.n, args.seed, args.template.split(",") if args.template else None, (lo, hi))
    train, test = split_pairs(pairs, args.test_fraction)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_pairs(train, out / "train.jsonl")
    save_pairs(test, out / "test.jsonl")
    sys.stdout.write(f"wrote {len(train)} train and {len(test)} test pairs to {out}\n")


if __name__ == "__main__":
    main()
