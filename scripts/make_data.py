"""Generate the small datasets shipped in ``data/``.

Run from anywhere: ``python scripts/make_data.py``. Standard library only, one fixed seed, so every run
writes byte-identical files. Answers are computed by code (arithmetic, conversions, sorting, counting) or
looked up in fixed tables (capitals, definitions), so the "good" responses are correct.

Writes:
    data/sft/{train,eval}.jsonl          chat conversations ({"messages": [...]})
    data/prefs/{train,eval}.jsonl        preference pairs ({"prompt", "chosen", "rejected"})
    data/examples/*.jsonl                5-row files in the other accepted shapes
    data/README.md                       what all of the above is, with counts

Train and eval are disjoint by prompt text (and by the table entries and sentences they draw from); the
script asserts it. Rejected responses carry a flaw from a small pool of recurring, token-visible types, so
that even a tiny model learns the preference in a few DPO steps and generalises to the held-out pairs.
"""

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SEED = 1234
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

N_SFT_TRAIN, N_SFT_EVAL = 400, 60
N_PREFS_TRAIN, N_PREFS_EVAL = 400, 64
N_EXAMPLES = 5
MULTI_TURN_SFT = 0.20  # share of SFT rows with 2-3 user turns
SYSTEM_SFT = 0.05  # share of SFT rows with one leading system turn
MULTI_TURN_PREFS = 0.10  # share of preference prompts that are multi-turn
N_EVAL_COUNTRIES, N_EVAL_WORDS, N_EVAL_SENTENCES = 8, 8, 10  # table entries held out for eval
# Length budget of a whole row (prompt + the longer response), see row_cost(). Calibrated on the
# Mistral/Mixtral SentencePiece tokenizer, where digits are one token each and capitals and newlines split
# words up: a cost of 380 stays under about 120 tokens, chat-template tokens (about 4 a message) included.
MAX_COST = 380

# ---------------------------------------------------------------------------------------------------------
# Fixed tables
# ---------------------------------------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Brazil", "Brasília"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Mexico", "Mexico City"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Peru", "Lima"),
    ("Colombia", "Bogotá"),
    ("Russia", "Moscow"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Iceland", "Reykjavík"),
    ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Switzerland", "Bern"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"),
    ("New Zealand", "Wellington"),
    ("Morocco", "Rabat"),
    ("Ghana", "Accra"),
    ("Hungary", "Budapest"),
    ("Czechia", "Prague"),
]

DEFINITIONS = [
    ("benevolent", "kind and wanting to help others"),
    ("candid", "honest and direct"),
    ("diligent", "careful and hard-working"),
    ("ephemeral", "lasting for a very short time"),
    ("frugal", "careful not to waste money"),
    ("gregarious", "fond of company and sociable"),
    ("humble", "modest about your own importance"),
    ("meticulous", "very careful about small details"),
    ("nostalgia", "a fond longing for the past"),
    ("optimistic", "hopeful about the future"),
    ("pragmatic", "dealing with things in a practical way"),
    ("resilient", "able to recover quickly from difficulty"),
    ("serene", "calm and peaceful"),
    ("tenacious", "holding firmly to a goal"),
    ("ubiquitous", "found almost everywhere"),
    ("verbose", "using more words than needed"),
    ("whimsical", "playful in an unusual way"),
    ("zealous", "full of energy for a cause"),
    ("ambiguous", "open to more than one meaning"),
    ("brevity", "the use of few words"),
    ("curious", "eager to learn or know something"),
    ("eloquent", "fluent and persuasive in speaking"),
    ("fragile", "easily broken or damaged"),
    ("generous", "willing to give freely"),
    ("hypothesis", "a proposed explanation to be tested"),
    ("inevitable", "certain to happen"),
    ("jovial", "cheerful and friendly"),
    ("lucid", "clear and easy to understand"),
    ("mundane", "ordinary and not exciting"),
    ("novice", "a person new to an activity"),
    ("obsolete", "no longer in use"),
    ("punctual", "arriving exactly on time"),
    ("redundant", "no longer needed or useful"),
    ("skeptical", "doubting that something is true"),
    ("tranquil", "free from disturbance"),
    ("vivid", "bright and intense"),
    ("wary", "cautious about possible danger"),
    ("café", "a small place serving coffee and light meals"),
    ("archive", "a collection of historical records"),
    ("catalyst", "something that causes change"),
]

# No apostrophes: str.title() would capitalise the letter after one.
SENTENCES = [
    "The sun is bright today.",
    "My cat likes to sleep on the sofa.",
    "We walked along the quiet beach.",
    "The train leaves at nine in the morning.",
    "Please close the window before you go.",
    "She plays the piano every evening.",
    "The library opens at ten.",
    "Fresh bread smells wonderful.",
    "Our team won the final match.",
    "The river runs past the old mill.",
    "He painted the fence bright green.",
    "A small bird sat on the branch.",
    "The soup needs a little more salt.",
    "They planted tomatoes in the garden.",
    "The museum is closed on Mondays.",
    "I forgot my umbrella at home.",
    "The children built a sandcastle.",
    "Meet me at the café at noon.",
    "We took the night train to Zürich.",
    "The moon was full last night.",
    "This road leads to the harbor.",
    "The coffee is too hot to drink.",
    "Snow covered the whole village.",
    "My brother collects old stamps.",
    "The meeting starts in ten minutes.",
    "Lemons grow well in warm places.",
    "The dog chased the red ball.",
    "She wrote a letter to her aunt.",
    "The stars are easy to see here.",
    "Turn left at the next corner.",
    "The bakery sells warm pretzels.",
    "Our neighbor has three goats.",
    "The clock on the wall is slow.",
    "Rain is expected this afternoon.",
    "The kettle is on the stove.",
    "He reads a book every week.",
    "The market is busy on Saturdays.",
    "We watched the sunset from the hill.",
    "The bus was late again.",
    "A gentle wind moved the curtains.",
    "The pencil on the desk is blue.",
    "They sailed across the calm lake.",
    "The garden gate is painted white.",
    "My phone battery is almost empty.",
    "The old bridge was repaired last year.",
    "Owls hunt quietly at night.",
    "The teacher smiled at the class.",
    "Bring a jacket in case it gets cold.",
]

SORT_WORDS = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi",
    "melon", "olive", "tiger", "zebra", "horse", "eagle", "otter", "panda", "river", "cloud",
    "stone", "maple", "cedar", "tulip", "daisy", "violet", "piano", "guitar", "violin", "drum",
    "table", "chair", "lamp", "window", "garden", "bridge", "rocket", "planet", "comet", "café",
]  # fmt: skip

COUNT_WORDS = SORT_WORDS + [
    "mississippi", "committee", "balloon", "bookkeeper", "letter", "success", "coffee", "pepper",
    "giraffe", "address", "elephant", "computer", "umbrella", "keyboard", "mountain", "Zürich",
    "strawberry", "butterfly", "pineapple", "bicycle",
]  # fmt: skip

LIST_ITEMS = [
    "red", "green", "blue", "yellow", "orange", "purple", "milk", "eggs", "bread", "butter",
    "cheese", "rice", "Monday", "Friday", "Sunday", "lion", "wolf", "fox", "bear", "owl",
    "hammer", "saw", "drill", "wrench", "violin", "flute", "harp", "cello",
]  # fmt: skip

SYSTEM_PROMPTS = [
    "You are a helpful and polite assistant.",
    "You are a friendly assistant. Keep answers short.",
    "Answer briefly and politely.",
]

OPENERS = ["Sure!", "Of course.", "Happy to help.", "Certainly."]

# ---------------------------------------------------------------------------------------------------------
# Flaw pool for rejected responses: each type has a recurring, token-visible surface form.
# ---------------------------------------------------------------------------------------------------------

REFUSALS = [
    "I won't help with that.",
    "I can't answer that.",
    "No. I'm not going to do that.",
    "Sorry, I refuse to answer that.",
    "That's not something I will do.",
    "I'd rather not answer.",
]
RUDE = [
    "Figure it out yourself.",
    "Ugh, what a dumb question.",
    "Look it up yourself, I'm busy.",
    "Why should I bother with that?",
    "Seriously? Do your own work.",
    "Not my problem. Go away.",
]
RAMBLES = [
    "Um, um, um... so, like, {x} Um, um, yeah, um.",
    "Uh, well, um, so, hmm, um, {x} Or, um, something, um.",
    "Hmm, hmm, well, well, um, let me, um, {x} Um, um, anyway.",
    "So, um, like, you know, um, {x} You know, like, um.",
]
OFF_TOPIC = [
    "By the way, did you know octopuses have three hearts?",
    "Anyway, I had a really nice sandwich for lunch today.",
    "That reminds me, my favorite color is purple.",
    "Random thought: penguins cannot fly but they swim well.",
    "Let's talk about the weather instead. It is sunny here.",
    "Speaking of which, have you ever been to a zoo?",
    "Fun fact: honey never spoils if it is stored well.",
]

# (name, share of pairs, description for the README)
FLAWS = [
    ("refusal", 0.20, "curt refusal to do a harmless task", REFUSALS),
    ("rude", 0.18, "rude dismissal of the user", RUDE),
    ("shouting", 0.18, "the polite answer (right or wrong, half each) in ALL CAPS ending in `!!!`", None),
    ("rambling", 0.16, "filler words (`um, um, um...`) wrapped around the answer (right or wrong)", RAMBLES),
    ("off_topic", 0.18, "unrelated small talk that ignores the question", OFF_TOPIC),
    ("subtle", 0.10, "same polite style, but a wrong computed answer (or the wrong format)", None),
]

TOPICS = [
    "arithmetic",
    "conversion",
    "sorting",
    "counting",
    "capitals",
    "definitions",
    "case",
    "formatting",
]


@dataclass(frozen=True)
class Turn:
    user: str
    core: str  # correct answer body, without the polite opener
    wrong: str  # a plausible wrong answer body in the same style
    bare: bool = False  # the user asked for a bare answer (one word, a number, JSON): no opener


@dataclass(frozen=True)
class Pools:
    countries: list
    definitions: list
    sentences: list


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def fmt(x: float) -> str:
    """A number with at most 2 decimals and no trailing zeros."""
    r = round(x, 2)
    if abs(r - round(r)) < 1e-9:
        return str(int(round(r)))
    return f"{r:.2f}".rstrip("0").rstrip(".")


def is_rounded(x: float) -> bool:
    return abs(x - round(x, 2)) > 1e-9


def off(v: int, rng: random.Random) -> int:
    """A nearby wrong integer."""
    return v + rng.choice([-1, 1]) * rng.randint(1, 9)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def join(items) -> str:
    return ", ".join(str(i) for i in items)


def n_letters(s: str) -> int:
    return sum(c.isalpha() for c in s)


def swap_adjacent(items: list, rng: random.Random) -> list:
    """A near miss of a sorted list: two neighbours swapped (they must differ)."""
    out = list(items)
    idx = [i for i in range(len(out) - 1) if out[i] != out[i + 1]]
    i = rng.choice(idx)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def quota(n: int, shares: list[tuple[str, float]]) -> list[str]:
    """Exactly n labels in the given proportions (largest remainder), in a fixed order."""
    total = sum(s for _, s in shares)
    raw = [(name, n * s / total) for name, s in shares]
    counts = {name: int(x) for name, x in raw}
    left = n - sum(counts.values())
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i][1] - int(raw[i][1])), i))
    for i in by_remainder[:left]:
        counts[raw[i][0]] += 1
    return [name for name, _ in shares for _ in range(counts[name])]


def shuffled(items: list, rng: random.Random) -> list:
    out = list(items)
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Topic generators: each returns three chained turns (a first question and two follow-ups).
# ---------------------------------------------------------------------------------------------------------


def gen_arithmetic(rng: random.Random, pools: Pools) -> list[Turn]:
    op = rng.choice("+-*")
    if op == "+":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        v = a + b
        q = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?"])
        ans = "{a} + {b} = {v}."
    elif op == "-":
        a, b = rng.randint(10, 99), rng.randint(2, 60)
        a, b = max(a, b), min(a, b)
        v = a - b
        q = rng.choice(["What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?"])
        ans = "{a} - {b} = {v}."
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 20)
        v = a * b
        q = rng.choice(["What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?"])
        ans = "{a} times {b} is {v}."
    w = off(v, rng)
    turns = [Turn(q.format(a=a, b=b), ans.format(a=a, b=b, v=v), ans.format(a=a, b=b, v=w))]
    for kind in rng.sample(["double", "add", "sub", "mul", "parity"], 2):
        k = rng.randint(2, 20)
        if kind == "double":
            v, user, ans = v * 2, "Now double it.", "Doubled, that is {v}."
        elif kind == "add":
            v, user, ans = v + k, f"Now add {k} to that.", f"Adding {k} gives {{v}}."
        elif kind == "sub":
            v, user, ans = v - k, f"Now subtract {k}.", f"Subtracting {k} gives {{v}}."
        elif kind == "mul":
            k = rng.randint(2, 5)
            v, user, ans = v * k, f"Now multiply that by {k}.", f"Multiplied by {k}, that is {{v}}."
        else:
            even = "The result, {v}, is even."
            odd = "The result, {v}, is odd."
            good, bad = (even, odd) if v % 2 == 0 else (odd, even)
            turns.append(Turn("Is the result even?", good.format(v=v), bad.format(v=v)))
            continue
        turns.append(Turn(user, ans.format(v=v), ans.format(v=off(v, rng))))
    return turns


LINEAR = {
    "length": {"kilometers": 1000.0, "miles": 1609.344, "meters": 1.0},
    "mass": {"kilograms": 1000.0, "pounds": 453.59237, "grams": 1.0},
    "time": {"hours": 3600.0, "minutes": 60.0, "seconds": 1.0},
}
START = {  # (from unit, main target, third unit, value range)
    "length": [("kilometers", "miles", "meters", (2, 200)), ("miles", "kilometers", "meters", (2, 200))],
    "mass": [("kilograms", "pounds", "grams", (2, 150)), ("pounds", "kilograms", "grams", (2, 300))],
    "time": [("minutes", "hours", "seconds", (2, 40)), ("hours", "minutes", "seconds", (2, 48))],
}


def qty_linear(v: float, unit: str) -> str:
    s = fmt(v)
    return f"{s} {unit[:-1] if s == '1' else unit}"


TEMP_NAMES = {"C": "Celsius", "F": "Fahrenheit", "K": "Kelvin"}


def to_kelvin(v: float, scale: str) -> float:
    return {"C": v + 273.15, "F": (v - 32) * 5 / 9 + 273.15, "K": v}[scale]


def from_kelvin(k: float, scale: str) -> float:
    return {"C": k - 273.15, "F": (k - 273.15) * 9 / 5 + 32, "K": k}[scale]


def qty_temp(v: float, scale: str, symbols: bool) -> str:
    s = fmt(v)
    if scale == "K":
        return f"{s} K" if symbols else f"{s} kelvin"
    if symbols:
        return f"{s} °{scale}"
    return f"{s} {'degree' if s == '1' else 'degrees'} {TEMP_NAMES[scale]}"


def gen_conversion(rng: random.Random, pools: Pools) -> list[Turn]:
    family = rng.choice(["length", "mass", "time", "temperature"])
    asks = ["Convert {q} to {u}.", "What is {q} in {u}?", "How much is {q} in {u}?"]
    if family == "temperature":
        symbols = rng.random() < 0.25
        src = rng.choice("CF")
        v = rng.randint(-20, 40) if src == "C" else rng.randint(0, 110)
        targets = shuffled(["F" if src == "C" else "C", "K"], rng)

        def conv(x: float, dst: str) -> float:
            return from_kelvin(to_kelvin(x, src), dst)

        def q(x: float, scale: str) -> str:
            return qty_temp(x, scale, symbols)
    else:
        src, main, third, (lo, hi) = rng.choice(START[family])
        v = rng.randint(lo, hi)
        if family == "time" and src == "minutes":
            v *= 15  # 30..600 minutes: friendlier numbers
        targets = [main, third]
        factors = LINEAR[family]

        def conv(x: float, dst: str) -> float:
            return x * factors[src] / factors[dst]

        def q(x: float, unit: str) -> str:
            return qty_linear(x, unit)

    def name(u: str) -> str:
        return TEMP_NAMES[u] if family == "temperature" else u

    def answer(x: float, dst: str) -> tuple[str, str]:
        y = conv(x, dst)
        about = "about " if is_rounded(y) else ""
        bad = y + rng.choice([-1, 1]) * rng.choice([2, 3, 5, 10, 20])
        return f"{q(x, src)} is {about}{q(y, dst)}.", f"{q(x, src)} is {about}{q(bad, dst)}."

    turns = [Turn(rng.choice(asks).format(q=q(v, src), u=name(targets[0])), *answer(v, targets[0]))]
    turns.append(Turn(f"And in {name(targets[1])}?", *answer(v, targets[1])))
    v2 = v + rng.choice([-1, 1]) * rng.randint(1, 10) * (15 if family == "time" and src == "minutes" else 1)
    if v2 <= 1 and family != "temperature":
        v2 = v + 5
    turns.append(Turn(f"And {q(v2, src)} in {name(targets[1])}?", *answer(v2, targets[1])))
    return turns


def gen_sorting(rng: random.Random, pools: Pools) -> list[Turn]:
    k = rng.randint(3, 5)
    if rng.random() < 0.5:
        items = rng.sample(SORT_WORDS, k)
        q = rng.choice(["Sort these words alphabetically: {l}.", "Put these in alphabetical order: {l}."])
        label, rev_label, extreme_q, extreme_a = (
            "In alphabetical order",
            "In reverse alphabetical order",
            "Which word comes last alphabetically?",
            "'{x}' comes last.",
        )
        pool = SORT_WORDS
    else:
        items = rng.sample(range(1, 100), k)
        q = rng.choice(["Sort these numbers from smallest to largest: {l}.", "Sort in ascending order: {l}."])
        label, rev_label, extreme_q, extreme_a = (
            "From smallest to largest",
            "From largest to smallest",
            "Which one is the largest?",
            "The largest is {x}.",
        )
        pool = list(range(1, 100))
    while items == sorted(items):
        rng.shuffle(items)
    cur = sorted(items)
    turns = [Turn(q.format(l=join(items)), f"{label}: {join(cur)}.", f"{label}: {join(swap_adjacent(cur, rng))}.")]
    descending = False
    for kind in rng.sample(["reverse", "extreme", "add"], 2):
        if kind == "reverse":
            descending = not descending
            cur = cur[::-1]
            lab = rev_label if descending else label
            turns.append(
                Turn(
                    "Sort them in reverse.",
                    f"{lab}: {join(cur)}.",
                    f"{lab}: {join(swap_adjacent(cur, rng))}.",
                )
            )
        elif kind == "extreme":
            turns.append(Turn(extreme_q, extreme_a.format(x=max(cur)), extreme_a.format(x=min(cur))))
        else:
            new = rng.choice([x for x in pool if x not in cur])
            cur = sorted([*cur, new], reverse=descending)
            lab = rev_label if descending else label
            turns.append(
                Turn(
                    f"Add {new} and sort again.",
                    f"{lab}: {join(cur)}.",
                    f"{lab}: {join(swap_adjacent(cur, rng))}.",
                )
            )
    return turns


def gen_counting(rng: random.Random, pools: Pools) -> list[Turn]:
    mode = rng.choice(["letters", "occurrences", "words"])
    if mode == "words":
        s = rng.choice(pools.sentences)
        words = s.rstrip(".").split()
        n = len(words)
        q = rng.choice(
            [
                "How many words are in this sentence: '{s}'",
                "Count the words in: '{s}'",
                "How many words does this sentence have? '{s}'",
            ]
        )
        turns = [Turn(q.format(s=s), f"That sentence has {n} words.", f"That sentence has {off(n, rng)} words.")]
        m = n_letters(s)
        turns.append(
            Turn(
                "And how many letters in total?",
                f"It has {m} letters in total.",
                f"It has {m + rng.choice([-2, -1, 1, 2])} letters in total.",
            )
        )
        turns.append(
            Turn(
                "What is the last word?",
                f"The last word is '{words[-1]}'.",
                f"The last word is '{words[0]}'.",
            )
        )
        return turns
    if mode == "letters":
        w = rng.choice(COUNT_WORDS)
        q = rng.choice(
            [
                "How many letters are in the word '{w}'?",
                "Count the letters in '{w}'.",
                "How many letters does '{w}' have?",
            ]
        )
        n = n_letters(w)
        turns = [Turn(q.format(w=w), f"'{w}' has {n} letters.", f"'{w}' has {n + rng.choice([-1, 1, 2])} letters.")]
    else:
        w = rng.choice([x for x in COUNT_WORDS if len(set(x)) < len(x)])  # words with a repeated letter
        c = rng.choice([ch for ch in sorted(set(w)) if w.count(ch) > 1])
        n = w.count(c)
        q = rng.choice(
            [
                "How many times does the letter '{c}' appear in '{w}'?",
                "Count the letter '{c}' in the word '{w}'.",
            ]
        )
        turns = [
            Turn(
                q.format(c=c, w=w),
                f"The letter '{c}' appears {plural(n, 'time')} in '{w}'.",
                f"The letter '{c}' appears {plural(n - 1, 'time')} in '{w}'.",
            )
        ]
    follow = ["backwards", "vowels"] if w.isascii() else ["backwards", "first"]
    for kind in shuffled(follow, rng):
        if kind == "backwards":
            rev = w[::-1]
            bad = w[1:][::-1] + w[0] if w[1:][::-1] + w[0] != rev else w
            turns.append(Turn("Spell it backwards.", f"'{w}' backwards is '{rev}'.", f"'{w}' backwards is '{bad}'."))
        elif kind == "vowels":
            v = sum(ch in "aeiou" for ch in w.lower())
            turns.append(
                Turn(
                    "And how many vowels?",
                    f"'{w}' has {plural(v, 'vowel')}.",
                    f"'{w}' has {plural(v + rng.choice([-1, 1]) if v > 1 else v + 1, 'vowel')}.",
                )
            )
        else:
            turns.append(
                Turn(
                    "What is its first letter?",
                    f"The first letter is '{w[0]}'.",
                    f"The first letter is '{w[-1]}'.",
                )
            )
    return turns


def gen_capitals(rng: random.Random, pools: Pools) -> list[Turn]:
    (c, cap), (c2, cap2), (_, decoy), (_, decoy2) = rng.sample(pools.countries, 4)
    q = rng.choice(
        [
            "What is the capital of {c}?",
            "Which city is the capital of {c}?",
            "Name the capital of {c}.",
            "What's the capital city of {c}?",
            "Tell me the capital of {c}.",
        ]
    )
    turns = [Turn(q.format(c=c), f"The capital of {c} is {cap}.", f"The capital of {c} is {decoy}.")]
    last = cap
    for kind in rng.sample(["other", "letters"], 2):
        if kind == "other":
            turns.append(Turn(f"And of {c2}?", f"The capital of {c2} is {cap2}.", f"The capital of {c2} is {decoy2}."))
            last = cap2
        else:
            n = n_letters(last)
            turns.append(
                Turn(
                    "How many letters are in that name?",
                    f"'{last}' has {n} letters.",
                    f"'{last}' has {n + rng.choice([-1, 1])} letters.",
                )
            )
    return turns


def gen_definitions(rng: random.Random, pools: Pools) -> list[Turn]:
    (w, d), (w2, d2), (_, decoy), (_, decoy2) = rng.sample(pools.definitions, 4)
    q = rng.choice(
        [
            "What does '{w}' mean?",
            "Define '{w}'.",
            "What is the meaning of '{w}'?",
            "Give a short definition of '{w}'.",
        ]
    )
    turns = [Turn(q.format(w=w), f"'{w}' means {d}.", f"'{w}' means {decoy}.")]
    last = w
    for kind in rng.sample(["other", "letters"], 2):
        if kind == "other":
            turns.append(Turn(f"And '{w2}'?", f"'{w2}' means {d2}.", f"'{w2}' means {decoy2}."))
            last = w2
        else:
            n = n_letters(last)
            turns.append(
                Turn(
                    "How many letters does it have?",
                    f"'{last}' has {n} letters.",
                    f"'{last}' has {n + rng.choice([-1, 1])} letters.",
                )
            )
    return turns


def gen_case(rng: random.Random, pools: Pools) -> list[Turn]:
    s = rng.choice(pools.sentences)
    forms = {"upper": s.upper(), "lower": s.lower(), "title": s.title()}
    if rng.random() < 0.5:
        target, src = "upper", s
        q = rng.choice(["Rewrite in upper case: '{s}'", "Make this all caps: '{s}'", "Convert to upper case: '{s}'"])
    else:
        target = "lower"
        src = rng.choice([s.upper(), s.title()])
        q = rng.choice(
            [
                "Rewrite in lower case: '{s}'",
                "Convert to lower case: '{s}'",
                "Write this in lower case: '{s}'",
            ]
        )
    turns = [Turn(q.format(s=src), f"Here it is: {forms[target]}", f"Here it is: {src}")]
    nxt = ["lower" if target == "upper" else "upper", "title"]
    for t in shuffled(nxt, rng):
        bad = forms["upper" if t != "upper" else "title"]
        turns.append(Turn(f"Now in {t} case.", f"Here it is: {forms[t]}", f"Here it is: {bad}"))
    return turns


def bullets(items) -> str:
    return "\n".join(f"- {x}" for x in items)


def gen_formatting(rng: random.Random, pools: Pools) -> list[Turn]:
    mode = rng.choice(["bullets", "json", "one_word", "number"])
    if mode == "bullets":
        items = rng.sample(LIST_ITEMS, rng.randint(3, 4))
        while items == sorted(items, key=str.lower):
            rng.shuffle(items)
        q = rng.choice(["List these as a bullet list: {l}.", "Format as bullet points: {l}."])
        turns = [
            Turn(
                q.format(l=join(items)),
                f"Here is the list:\n{bullets(items)}",
                f"Here is the list: {join(items)}.",
            )
        ]
        for kind in shuffled(["numbered", "sorted"], rng):
            if kind == "numbered":
                num = "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
                turns.append(Turn("Now as a numbered list.", f"Here it is:\n{num}", f"Here it is:\n{bullets(items)}"))
            else:
                srt = sorted(items, key=str.lower)
                turns.append(
                    Turn(
                        "Now sort it alphabetically.",
                        f"Here it is:\n{bullets(srt)}",
                        f"Here it is:\n{bullets(swap_adjacent(srt, rng))}",
                    )
                )
        return turns
    if mode == "json":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        q = rng.choice(
            [
                'Give the sum of {a} and {b} as JSON with the key "sum".',
                'Return the sum of {a} and {b} as JSON under the key "sum".',
            ]
        )
        turns = [Turn(q.format(a=a, b=b), json.dumps({"sum": a + b}), f"The sum is {a + b}.", bare=True)]
        obj = {"sum": a + b}
        for key, val, word in shuffled([("product", a * b, "product"), ("difference", abs(a - b), "difference")], rng):
            wrong = dict(obj, **{key: off(val, rng)})
            obj = dict(obj, **{key: val})
            turns.append(Turn(f'Now add the {word} under "{key}".', json.dumps(obj), json.dumps(wrong), bare=True))
        return turns
    if mode == "one_word":
        one = [(c, cap) for c, cap in pools.countries if " " not in cap]
        (c, cap), (c2, cap2), (_, decoy), (_, decoy2) = rng.sample(one, 4)
        q = rng.choice(["Answer in one word: what is the capital of {c}?", "One word only: the capital of {c}?"])
        return [
            Turn(q.format(c=c), cap, decoy, bare=True),
            Turn(f"And of {c2}?", cap2, decoy2, bare=True),
            Turn("How many letters is that?", str(n_letters(cap2)), str(n_letters(cap2) + 1), bare=True),
        ]
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    q = rng.choice(["Answer with just the number: what is {a} + {b}?", "Reply with only the number: {a} + {b}?"])
    turns = [Turn(q.format(a=a, b=b), str(a + b), str(off(a + b, rng)), bare=True)]
    for _ in range(2):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        turns.append(Turn(f"And {a} + {b}?", str(a + b), str(off(a + b, rng)), bare=True))
    return turns


GENERATORS = {
    "arithmetic": gen_arithmetic,
    "conversion": gen_conversion,
    "sorting": gen_sorting,
    "counting": gen_counting,
    "capitals": gen_capitals,
    "definitions": gen_definitions,
    "case": gen_case,
    "formatting": gen_formatting,
}
assert list(GENERATORS) == TOPICS

# ---------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------


def polite(body: str, bare: bool, rng: random.Random) -> str:
    return body if bare else f"{rng.choice(OPENERS)} {body}"


def shout(text: str) -> str:
    text = text.upper().rstrip()
    return (text[:-1] if text[-1] in ".?" else text) + "!!!"


def flawed(turn: Turn, flaw: str, rng: random.Random) -> str:
    if flaw == "refusal":
        return rng.choice(REFUSALS)
    if flaw == "rude":
        return rng.choice(RUDE)
    if flaw == "off_topic":
        return rng.choice(OFF_TOPIC)
    if flaw == "subtle":
        return polite(turn.wrong, turn.bare, rng)
    body = turn.core if rng.random() < 0.5 else turn.wrong
    if flaw == "shouting":
        return shout(polite(body, turn.bare, rng))
    if flaw == "rambling":
        return rng.choice(RAMBLES).format(x=body)
    raise ValueError(flaw)


def row_cost(messages: list[dict]) -> int:
    text = "".join(m["content"] for m in messages)
    dense = 3 * sum(c.isdigit() for c in text) + sum(c.isupper() for c in text) + 2 * text.count("\n")
    return len(text) + dense + 12 * len(messages)


def row_view(row: dict) -> list[dict]:
    """The messages a row puts in front of a model: the conversation, or prompt + the longer response."""
    if "messages" in row:
        return row["messages"]
    return row["prompt"] + max(row["chosen"], row["rejected"], key=row_cost)


# ---------------------------------------------------------------------------------------------------------
# Building splits
# ---------------------------------------------------------------------------------------------------------


class Builder:
    """Draws unique examples: no first user prompt is used twice anywhere in data/."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.seen: set[str] = set()

    def turns(self, topic: str, pools: Pools, n_turns: int, fits) -> list[Turn]:
        for _ in range(1000):
            turns = GENERATORS[topic](self.rng, pools)[:n_turns]
            assert len(turns) == n_turns
            for t in turns:
                assert t.core != t.wrong, t
            if turns[0].user in self.seen or not fits(turns):
                continue
            self.seen.add(turns[0].user)
            return turns
        raise RuntimeError(f"could not draw a new {topic} example")

    def sft_row(self, topic: str, pools: Pools, n_turns: int, system: bool) -> dict:
        rng = self.rng
        sys_msg = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if system else []
        built: dict = {}

        def fits(turns: list[Turn]) -> bool:
            msgs = list(sys_msg)
            for t in turns:
                msgs.append({"role": "user", "content": t.user})
                msgs.append({"role": "assistant", "content": polite(t.core, t.bare, rng)})
            built["messages"] = msgs
            return row_cost(msgs) <= MAX_COST

        self.turns(topic, pools, n_turns, fits)
        return {"messages": built["messages"]}

    def pref_row(self, topic: str, pools: Pools, n_turns: int, flaw: str) -> dict:
        rng = self.rng
        built: dict = {}

        def fits(turns: list[Turn]) -> bool:
            prompt = []
            for t in turns[:-1]:
                prompt.append({"role": "user", "content": t.user})
                prompt.append({"role": "assistant", "content": polite(t.core, t.bare, rng)})
            prompt.append({"role": "user", "content": turns[-1].user})
            chosen = [{"role": "assistant", "content": polite(turns[-1].core, turns[-1].bare, rng)}]
            rejected = [{"role": "assistant", "content": flawed(turns[-1], flaw, rng)}]
            built.update(prompt=prompt, chosen=chosen, rejected=rejected)
            return row_cost(row_view(built)) <= MAX_COST and chosen != rejected

        self.turns(topic, pools, n_turns, fits)
        return dict(built)


def sft_split(b: Builder, pools: Pools, n: int) -> list[dict]:
    rng = b.rng
    topics = shuffled(quota(n, [(t, 1.0) for t in TOPICS]), rng)
    n_multi = round(n * MULTI_TURN_SFT)
    turn_counts = shuffled([1] * (n - n_multi) + [2] * (n_multi - n_multi // 2) + [3] * (n_multi // 2), rng)
    n_sys = round(n * SYSTEM_SFT)
    systems = shuffled([True] * n_sys + [False] * (n - n_sys), rng)
    return [b.sft_row(t, pools, k, s) for t, k, s in zip(topics, turn_counts, systems, strict=True)]


def pref_split(b: Builder, pools: Pools, n: int) -> tuple[list[dict], list[str]]:
    rng = b.rng
    topics = shuffled(quota(n, [(t, 1.0) for t in TOPICS]), rng)
    flaws = shuffled(quota(n, [(f[0], f[1]) for f in FLAWS]), rng)
    n_multi = round(n * MULTI_TURN_PREFS)
    turn_counts = shuffled([1] * (n - n_multi) + [2] * (n_multi - n_multi // 3) + [3] * (n_multi // 3), rng)
    rows = [b.pref_row(t, pools, k, f) for t, k, f in zip(topics, turn_counts, flaws, strict=True)]
    return rows, flaws


def first_user(row: dict) -> str:
    msgs = row.get("messages") or row.get("prompt")
    return next(m["content"] for m in msgs if m["role"] == "user")


def all_prompts(row: dict) -> str:
    msgs = row.get("messages") or row.get("prompt")
    return "\n".join(m["content"] for m in msgs if m["role"] == "user")


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------


def check_messages(msgs: list[dict], last: str) -> None:
    roles = [m["role"] for m in msgs]
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in msgs)
    assert all(set(m) == {"role", "content"} for m in msgs)
    body = roles[1:] if roles[0] == "system" else roles
    assert "system" not in body
    expect = ["user", "assistant"] * len(body)
    assert body == expect[: len(body)], roles
    assert body[-1] == last, roles


def check_sft(rows: list[dict]) -> None:
    for r in rows:
        assert set(r) == {"messages"}
        check_messages(r["messages"], "assistant")
        assert row_cost(r["messages"]) <= MAX_COST


def check_prefs(rows: list[dict]) -> None:
    for r in rows:
        assert set(r) == {"prompt", "chosen", "rejected"}
        check_messages(r["prompt"], "user")
        for side in ("chosen", "rejected"):
            assert len(r[side]) == 1 and r[side][0]["role"] == "assistant" and r[side][0]["content"].strip()
        assert r["chosen"] != r["rejected"]
        assert row_cost(row_view(r)) <= MAX_COST


def check_disjoint(train: list[dict], eval_: list[dict], what: str) -> None:
    a = {first_user(r) for r in train} | {all_prompts(r) for r in train}
    b = {first_user(r) for r in eval_} | {all_prompts(r) for r in eval_}
    assert not a & b, f"{what}: train and eval share prompts: {sorted(a & b)[:3]}"


# ---------------------------------------------------------------------------------------------------------
# Example files in the other accepted shapes
# ---------------------------------------------------------------------------------------------------------


def examples(b: Builder, pools: Pools) -> dict[str, list[dict]]:
    rng = b.rng
    out: dict[str, list[dict]] = {}

    # alpaca: instruction / input / output; sorting and case tasks put their text in `input`.
    alpaca = []
    for topic in ["arithmetic", "sorting", "capitals", "case", "definitions"]:
        turn = b.turns(topic, pools, 1, lambda t: True)[0]
        instruction, inp = turn.user, ""
        if topic in ("sorting", "case"):
            head, tail = turn.user.split(": ", 1)
            instruction, inp = (
                head + ".",
                tail.strip("'").rstrip(".") if topic == "sorting" else tail.strip("'"),
            )
        alpaca.append({"instruction": instruction, "input": inp, "output": polite(turn.core, turn.bare, rng)})
    out["alpaca"] = alpaca

    # sharegpt: conversations of {"from": human|gpt|system, "value"}.
    sharegpt = []
    for topic, n_turns, system in [
        ("conversion", 1, False),
        ("arithmetic", 2, False),
        ("counting", 1, True),
        ("sorting", 3, False),
        ("formatting", 1, False),
    ]:
        row = b.sft_row(topic, pools, n_turns, system)
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        sharegpt.append({"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in row["messages"]]})
    out["sharegpt"] = sharegpt

    # preference pairs as plain strings (single-turn prompts).
    strings = []
    for topic, flaw in zip(TOPICS[:5], [f[0] for f in FLAWS[:5]], strict=True):
        r = b.pref_row(topic, pools, 1, flaw)
        strings.append(
            {
                "prompt": r["prompt"][0]["content"],
                "chosen": r["chosen"][0]["content"],
                "rejected": r["rejected"][0]["content"],
            }
        )
    out["prefs_strings"] = strings

    # preference pairs as whole conversations sharing a prefix (no prompt key).
    full = []
    for topic, n_turns, flaw in [
        ("capitals", 1, "rude"),
        ("arithmetic", 2, "shouting"),
        ("definitions", 1, "refusal"),
        ("sorting", 2, "rambling"),
        ("case", 1, "subtle"),
    ]:
        r = b.pref_row(topic, pools, n_turns, flaw)
        full.append({"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]})
    out["prefs_full_conversations"] = full

    for r in alpaca:
        assert set(r) == {"instruction", "input", "output"}
    for r in full:
        assert r["chosen"][:-1] == r["rejected"][:-1] and r["chosen"][-1] != r["rejected"][-1]
        check_messages(r["chosen"], "assistant")
    assert all(len(v) == N_EXAMPLES for v in out.values())
    return out


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def pretty(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2)


def pick(rows: list[dict], pred) -> dict:
    return next(r for r in rows if pred(r))


def n_user_turns(row: dict) -> int:
    msgs = row.get("messages") or row.get("prompt")
    return sum(m["role"] == "user" for m in msgs)


def non_ascii(rows: list[dict]) -> int:
    return sum(not json.dumps(r, ensure_ascii=False).isascii() for r in rows)


def max_chars(rows: list[dict]) -> int:
    return max(sum(len(m["content"]) for m in row_view(r)) for r in rows)


def readme(
    sft_train: list[dict],
    sft_eval: list[dict],
    prefs_train: list[dict],
    prefs_eval: list[dict],
    flaws_train: list[str],
    flaws_eval: list[str],
    ex: dict[str, list[dict]],
) -> str:
    ct, ce = Counter(flaws_train), Counter(flaws_eval)
    n_train_entries = (
        f"{len(CAPITALS) - N_EVAL_COUNTRIES} countries, {len(DEFINITIONS) - N_EVAL_WORDS} words, "
        f"{len(SENTENCES) - N_EVAL_SENTENCES} sentences"
    )
    file_table = "\n".join(
        f"| `{path}` | {len(rows)} | {what} |"
        for path, rows, what in [
            ("sft/train.jsonl", sft_train, "SFT conversations (`messages` shape)"),
            ("sft/eval.jsonl", sft_eval, "held-out SFT conversations"),
            (
                "prefs/train.jsonl",
                prefs_train,
                "DPO preference pairs (`prompt`/`chosen`/`rejected` as messages)",
            ),
            ("prefs/eval.jsonl", prefs_eval, "held-out preference pairs"),
            ("examples/alpaca.jsonl", ex["alpaca"], "SFT rows in alpaca shape"),
            ("examples/sharegpt.jsonl", ex["sharegpt"], "SFT rows in ShareGPT shape"),
            ("examples/prefs_strings.jsonl", ex["prefs_strings"], "preference pairs as plain strings"),
            (
                "examples/prefs_full_conversations.jsonl",
                ex["prefs_full_conversations"],
                "whole conversations",
            ),
        ]
    )
    n_eval_entries = f"{N_EVAL_COUNTRIES}, {N_EVAL_WORDS}, {N_EVAL_SENTENCES}"

    def stats(rows: list[dict]) -> str:
        multi = sum(n_user_turns(r) > 1 for r in rows)
        sys_ = sum(r.get("messages", [{}])[0].get("role") == "system" for r in rows)
        s = f"{len(rows)} rows, {multi} multi-turn"
        if "messages" in rows[0]:
            s += f", {sys_} with a system turn"
        return s + f", {non_ascii(rows)} with non-ASCII text, longest {max_chars(rows)} characters"

    flaw_lines = [
        f"| `{name}` | {desc} | {ct[name]} ({ct[name] / len(flaws_train):.0%}) | "
        f"{ce[name]} ({ce[name] / len(flaws_eval):.0%}) |"
        for name, _, desc, _ in FLAWS
    ]

    def variants(pool: list[str]) -> str:
        return "; ".join(f"`{v}`" for v in pool)

    sft_single = pick(sft_train, lambda r: len(r["messages"]) == 2 and r["messages"][0]["role"] == "user")
    sft_multi = pick(sft_train, lambda r: n_user_turns(r) == 2 and r["messages"][0]["role"] == "user")
    sft_sys = pick(sft_train, lambda r: r["messages"][0]["role"] == "system")
    pref_single = prefs_train[0]
    pref_multi = pick(prefs_train, lambda r: len(r["prompt"]) > 1)

    return f"""# align datasets

Small datasets for tests, docs and smoke runs of `align` (SFT, then DPO). Everything here is written by
`scripts/make_data.py` (standard library only, fixed seed `{SEED}`, byte-identical output on every run):

```bash
python scripts/make_data.py
```

Do not edit the files by hand; change the script and regenerate. Licence: generated by the project,
Apache-2.0 (same as the code).

## Files

| file | rows | what |
| --- | ---: | --- |
{file_table}

- `sft/train.jsonl`: {stats(sft_train)}.
- `sft/eval.jsonl`: {stats(sft_eval)}.
- `prefs/train.jsonl`: {stats(prefs_train)}.
- `prefs/eval.jsonl`: {stats(prefs_eval)}.

All files are UTF-8 (no BOM), one JSON object per line, written with `ensure_ascii=False`. A few rows
contain non-ASCII text (`café`, `Zürich`, `°C`, `Bogotá`, ...) to exercise encoding. Every row is short:
prompt plus the longer response stays under about 120 tokens with the Mistral/Mixtral SentencePiece
tokenizer, chat-template tokens included (the script bounds characters + 3 per digit + 1 per capital
+ 2 per newline + 12 per message by {MAX_COST}).

**Held out.** No prompt appears twice anywhere in `data/`: the first user turn of every row is unique across
all files, so train and eval are disjoint by prompt text (the script asserts it). Beyond that, the countries,
words to define and sentences are split once into a train part ({n_train_entries})
and an eval part ({n_eval_entries}), so held-out rows about capitals, definitions, letter case and word
counts ask about entries the training files never mention.

## Content

Eight template topics in equal shares, with answers computed by code (or taken from fixed tables), so the
good answers are correct: arithmetic (add, subtract, multiply), unit conversion (km/miles/meters,
kg/pounds/grams, minutes/hours/seconds, Celsius/Fahrenheit/Kelvin), sorting words or numbers, counting
(letters, a letter's occurrences, words in a sentence), capitals (a table of 40 countries), definitions (a
table of 40 words), rewriting a sentence in upper/lower/title case, and formatting (bullet list, numbered
list, JSON, one word, just the number). Multi-turn rows follow up on the earlier turn ("Now double it.",
"And in Fahrenheit?", "Sort them in reverse.", "Now in title case.", "Spell it backwards.").

Good answers are short and polite: an opener ({variants(OPENERS)}) and one
sentence; when the user asks for a bare answer (one word, a number, JSON) the answer is exactly that.

## Schemas

### SFT: `messages` (`sft/*.jsonl`)

`{{"messages": [{{"role": "user"|"assistant"|"system", "content": str}}, ...]}}`. Roles alternate user /
assistant, start with `user` (or with one leading `system` turn) and end with `assistant`.

```json
{pretty(sft_single)}
```

Multi-turn:

```json
{pretty(sft_multi)}
```

With a system turn:

```json
{pretty(sft_sys)}
```

### SFT: alpaca (`examples/alpaca.jsonl`)

`{{"instruction": str, "input": str, "output": str}}`; `input` may be empty. One row is one exchange: the
user turn is the instruction together with the input (when not empty), the assistant turn is `output`.

```json
{pretty(ex["alpaca"][1])}
```

### SFT: ShareGPT (`examples/sharegpt.jsonl`)

`{{"conversations": [{{"from": "human"|"gpt"|"system", "value": str}}, ...]}}`, same turn order as
`messages`.

```json
{pretty(ex["sharegpt"][1])}
```

### Preferences: messages (`prefs/*.jsonl`)

`{{"prompt": [messages ending with a user turn], "chosen": [{{"role": "assistant", ...}}], "rejected":
[{{"role": "assistant", ...}}]}}`. The prompt is usually one user turn, occasionally a conversation.
`chosen` and `rejected` always differ.

```json
{pretty(pref_single)}
```

Multi-turn prompt:

```json
{pretty(pref_multi)}
```

### Preferences: plain strings (`examples/prefs_strings.jsonl`)

`{{"prompt": str, "chosen": str, "rejected": str}}`: a single user turn and the two replies.

```json
{pretty(ex["prefs_strings"][0])}
```

### Preferences: whole conversations (`examples/prefs_full_conversations.jsonl`)

No `prompt` key: `chosen` and `rejected` are whole conversations (user, assistant, ..., assistant) with the
same prefix, differing only in the last assistant turn. The shared prefix is the prompt.

```json
{pretty(ex["prefs_full_conversations"][1])}
```

## How the preference signal is built

`chosen` is always the correct, polite answer to the last user turn. `rejected` carries one flaw from a
small pool of types whose surface forms recur across train and eval, so the preference is visible in the
tokens themselves: a tiny randomly initialised model (hidden size 64, 2 layers) learns it within a few
dozen DPO steps and carries it over to the held-out pairs. Only the `subtle` type needs actual knowledge;
it is kept to about 10% so that a model which only learns the surface flaws and guesses on the subtle
pairs still reaches about 0.95 held-out implicit-reward accuracy (the target is 0.9 or better).

| flaw | rejected response | train | eval |
| --- | --- | ---: | ---: |
{chr(10).join(flaw_lines)}

The flaw of each pair is assigned by exact quota (largest remainder), then shuffled; topics are spread
evenly. Variants:

- refusal: {variants(REFUSALS)}
- rude: {variants(RUDE)}
- off_topic: {variants(OFF_TOPIC)}
- rambling (`{{x}}` is the answer): {variants(RAMBLES)}
- shouting: the polite answer upper-cased, its final `.`/`?` replaced by `!!!`
  (e.g. `SURE! 12 + 30 = 42!!!`)
- subtle: a nearby wrong number, a near-sorted list, another country's capital, another word's
  definition, the wrong letter case, or ignoring the requested format, in the same polite style.

The flaw of a pair is not stored in the rows; `python scripts/make_data.py` prints the mix.
"""


def main() -> None:
    rng = random.Random(SEED)
    countries = shuffled(CAPITALS, rng)
    definitions = shuffled(DEFINITIONS, rng)
    sentences = shuffled(SENTENCES, rng)
    train_pools = Pools(countries[N_EVAL_COUNTRIES:], definitions[N_EVAL_WORDS:], sentences[N_EVAL_SENTENCES:])
    eval_pools = Pools(countries[:N_EVAL_COUNTRIES], definitions[:N_EVAL_WORDS], sentences[:N_EVAL_SENTENCES])

    b = Builder(rng)
    sft_train = sft_split(b, train_pools, N_SFT_TRAIN)
    sft_eval = sft_split(b, eval_pools, N_SFT_EVAL)
    prefs_train, flaws_train = pref_split(b, train_pools, N_PREFS_TRAIN)
    prefs_eval, flaws_eval = pref_split(b, eval_pools, N_PREFS_EVAL)
    ex = examples(b, train_pools)

    check_sft(sft_train)
    check_sft(sft_eval)
    check_prefs(prefs_train)
    check_prefs(prefs_eval)
    check_disjoint(sft_train, sft_eval, "sft")
    check_disjoint(prefs_train, prefs_eval, "prefs")
    check_disjoint(sft_train + prefs_train, sft_eval + prefs_eval, "sft+prefs")

    outputs = {
        "sft/train.jsonl": sft_train,
        "sft/eval.jsonl": sft_eval,
        "prefs/train.jsonl": prefs_train,
        "prefs/eval.jsonl": prefs_eval,
        **{f"examples/{name}.jsonl": rows for name, rows in ex.items()},
    }
    for rel, rows in outputs.items():
        write_jsonl(DATA / rel, rows)
    text = readme(sft_train, sft_eval, prefs_train, prefs_eval, flaws_train, flaws_eval, ex)
    (DATA / "README.md").write_text(text, encoding="utf-8", newline="\n")

    for rel, rows in outputs.items():
        extra = ""
        if rel.startswith(("sft/", "prefs/")):
            multi = sum(n_user_turns(r) > 1 for r in rows)
            extra = f"  multi-turn {multi}, non-ASCII {non_ascii(rows)}, max chars {max_chars(rows)}"
        print(f"data/{rel}: {len(rows)} rows{extra}")
    for split, flaws in (("train", flaws_train), ("eval", flaws_eval)):
        mix = Counter(flaws)
        print(f"prefs/{split} flaws: " + ", ".join(f"{name} {mix[name]}" for name, *_ in FLAWS))
    print("data/README.md written")


if __name__ == "__main__":
    main()
