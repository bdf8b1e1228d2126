"""zoo:sentences — varied English sentences generated deterministically in code (no download)."""

from __future__ import annotations

import random

N_SENTENCES = 640  # the bundled set (calibration / eval slices of the recipes); a slice past it generates more
MAX_SENTENCES = 100_000

_SUBJECTS = [
    "the engineer", "a small robot", "my grandmother", "the city council", "our team", "a curious student",
    "the old lighthouse keeper", "the delivery drone", "a hungry fox", "the orchestra", "the new intern",
    "every volunteer", "the research group", "a quiet neighbour", "the football coach", "the startup",
    "the museum guide", "a tired nurse", "the chess club", "the weather station", "a young pianist",
    "the hospital", "the farmer", "the spacecraft", "the library", "a software update",
]
_VERBS = [
    "repaired", "described", "painted", "measured", "ignored", "celebrated", "compressed", "translated",
    "questioned", "delivered", "designed", "borrowed", "cleaned", "photographed", "optimized", "studied",
    "cancelled", "announced", "explored", "recorded", "tested", "sold", "planted", "rebuilt",
]
_OBJECTS = [
    "the broken bicycle", "a detailed map of the coast", "the quarterly budget", "an ancient manuscript",
    "the neural network", "a basket of ripe apples", "the train schedule", "the solar panels",
    "a letter from abroad", "the community garden", "the phone's battery", "a new recipe for bread",
    "the bridge over the river", "the voting results", "a tiny sensor board", "the winter festival",
    "the latency measurements", "a pair of hiking boots", "the school's roof", "the customer complaints",
]
_PLACES = [
    "in the morning", "after the storm", "near the harbour", "during the meeting", "before lunch",
    "at the edge of town", "on a crowded train", "under a grey sky", "in the laboratory", "late at night",
    "beside the old mill", "across the valley", "in front of the station", "inside the warehouse",
]
_CLAUSES = [
    "because nobody else knew how", "although it was raining heavily", "while the children watched",
    "so that the results could be checked again", "even though the deadline had passed",
    "and then wrote a short report about it", "which surprised almost everyone in the room",
    "after reading the instructions twice", "until the sun went down", "without asking for any help",
    "since the previous attempt had failed", "as the committee had requested last week",
    "while a dog barked somewhere in the distance", "and the neighbours brought coffee and cake",
    "though the old machine kept making strange noises", "so the numbers finally added up",
]
_QUESTIONS = [
    "Why did {s} decide that {o} needed attention {p}?",
    "Has anyone seen {o} since {s} {v} it {p}?",
    "How long will it take before {s} has {v} {o}?",
]
_FACTS = [
    "Water boils at one hundred degrees Celsius at sea level.",
    "Small models can run on phones when they are quantized carefully.",
    "The capital of France is Paris.",
    "Bees communicate the location of flowers by dancing.",
    "Latency should always be measured after a warm-up.",
    "Thunder follows lightning because sound travels slower than light.",
    "Good documentation saves more time than it costs.",
    "A balanced diet includes fruit, vegetables and grains.",
]


def sentences(n: int = N_SENTENCES, seed: int = 1234) -> list[str]:
    """`n` distinct sentences; the number of appended clauses spreads their length from ~8 to ~128 tokens.

    The generator is sequential, so `sentences(m)[:n] == sentences(n)` for m > n: slices past the bundled 640
    (e.g. 1000 calibration sentences at [640:1640]) never overlap the recipes' eval slices.
    """
    have = _LONGEST.get(seed, ())
    if len(have) < n:  # the generator is sequential: the longest list made so far serves every shorter request
        have = _LONGEST[seed] = _generate(n, seed)
    return list(have[:n])


_LONGEST: dict[int, tuple[str, ...]] = {}


def _generate(n: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    tries = 0  # draws for the current index: the fact sentences run out (8 facts x 26 subjects x 14 places)
    while len(out) < n:
        i = len(out)
        kind = i % 10
        if kind == 0 and tries > 500:  # past ~29,000 sentences: a clause sentence takes the fact's turn
            kind = 2
        if kind == 0:
            s = rng.choice(_FACTS)
            if s in seen:
                s = f"{s[:-1]}, as {rng.choice(_SUBJECTS)} noted {rng.choice(_PLACES)}."
        elif kind == 1:
            s = rng.choice(_QUESTIONS).format(
                s=rng.choice(_SUBJECTS), o=rng.choice(_OBJECTS), v=rng.choice(_VERBS), p=rng.choice(_PLACES))
        else:
            # clause count grows in a saw-tooth over the index so every length band is represented
            n_clauses = (i * 7) % 11
            parts = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}"]
            for _ in range(n_clauses):
                parts.append(rng.choice(_CLAUSES))
                if rng.random() < 0.5:
                    parts.append(f"and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}")
            s = ", ".join(parts)
            s = s[0].upper() + s[1:] + "."
        if s not in seen:
            seen.add(s)
            out.append(s)
            tries = 0
        else:
            tries += 1
    return tuple(out)


def split(spec: str | None, default: slice) -> list[str]:
    """Sentences selected by a slice written like `[64:320]` (the part after `zoo:sentences`); a stop past the
    bundled 640 generates that many (at most MAX_SENTENCES)."""
    sl = default
    if spec:
        body = spec.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError(f"expected a slice like [0:64], got {spec!r}")
        parts = body[1:-1].split(":")
        if len(parts) != 2:
            raise ValueError(f"expected a slice like [0:64], got {spec!r}")
        a, b = (int(p) if p.strip() else None for p in parts)
        if (a is not None and a < 0) or (b is not None and b < 0):
            raise ValueError(f"expected a slice with non-negative bounds, got {spec!r}")
        if b is not None and b > MAX_SENTENCES:
            raise ValueError(f"at most {MAX_SENTENCES} sentences can be generated, got {spec!r}")
        sl = slice(a, b)
    return sentences(max(N_SENTENCES, sl.stop or 0))[sl]
