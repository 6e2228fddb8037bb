"""The label grammar of the Fashion-MNIST outfits data: which labels a scene holds.

Labels (Fashion-MNIST classes 0..9)::

    t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle-boot

Outfit grammar (``grammar="outfits"``). A scene first picks a style by its
weight; then each slot of the style is filled independently with probability
p(slot), with one of the slot's items (by the given odds when there are two).
If no slot was filled, the slots are drawn again. Then, if the scene has fewer
than 4 items, with probability 0.10 one off-style item is added, drawn
uniformly from the labels that do not occur in the style::

    style    weight  slot     p(slot)  item(s)
    -------  ------  -------  -------  -----------------------------
    winter   0.20    outer    0.70     coat
                     top      0.75     pullover
                     bottom   0.75     trouser
                     shoes    0.85     ankle-boot
    summer   0.20    top      0.95     t-shirt 0.60 / dress 0.40
                     shoes    0.80     sandal
                     bag      0.45     bag
    office   0.20    top      0.90     shirt
                     bottom   0.80     trouser
                     shoes    0.60     ankle-boot
                     bag      0.60     bag
    sport    0.20    top      0.85     t-shirt
                     bottom   0.65     trouser
                     shoes    0.90     sneaker
                     bag      0.30     bag
    evening  0.20    dress    0.90     dress
                     shoes    0.80     sandal 0.60 / ankle-boot 0.40
                     bag      0.70     bag

So every scene holds 1-4 distinct items: a subset of one style's items plus
at most one off-style item. :func:`describe_grammar` prints this table with
the exact label frequencies it implies.

Control variant (``grammar="independent"``): each of the 10 labels is present
independently, with Bernoulli probabilities calibrated so that, after keeping
only draws with 1-4 labels, every label has exactly the marginal frequency it
has under the outfit grammar. Same labels, same frequencies, no co-occurrence
structure: the difference between the two measures what the label model
learns from context.
"""
from __future__ import annotations

from typing import Callable, Dict, FrozenSet, List, NamedTuple, Tuple

import numpy as np

from cnnrnn_tf.errors import InputError

OUTFIT_LABELS: Tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)


GRAMMARS: Tuple[str, ...] = ("outfits", "independent")


MAX_ITEMS = 4


OFF_STYLE_PROBABILITY = 0.10


class Slot(NamedTuple):
    """One slot of an outfit style: filled with ``probability``, by one of ``choices``."""

    name: str
    probability: float
    choices: Tuple[Tuple[str, float], ...]  # (label, odds), odds sum to 1


class Style(NamedTuple):
    """An outfit style: picked with ``weight``; its ``slots`` are filled independently."""

    name: str
    weight: float
    slots: Tuple[Slot, ...]

    @property
    def items(self) -> Tuple[str, ...]:
        """The labels this style can produce (without the off-style item)."""
        out: List[str] = []
        for slot in self.slots:
            for label, _ in slot.choices:
                if label not in out:
                    out.append(label)
        return tuple(out)


def _slot(name: str, probability: float, *choices) -> Slot:
    if len(choices) == 1 and isinstance(choices[0], str):
        return Slot(name, probability, ((choices[0], 1.0),))
    return Slot(name, probability, tuple(choices))


OUTFIT_STYLES: Tuple[Style, ...] = (
    Style("winter", 0.20, (
        _slot("outer", 0.70, "coat"),
        _slot("top", 0.75, "pullover"),
        _slot("bottom", 0.75, "trouser"),
        _slot("shoes", 0.85, "ankle-boot"),
    )),
    Style("summer", 0.20, (
        _slot("top", 0.95, ("t-shirt", 0.60), ("dress", 0.40)),
        _slot("shoes", 0.80, "sandal"),
        _slot("bag", 0.45, "bag"),
    )),
    Style("office", 0.20, (
        _slot("top", 0.90, "shirt"),
        _slot("bottom", 0.80, "trouser"),
        _slot("shoes", 0.60, "ankle-boot"),
        _slot("bag", 0.60, "bag"),
    )),
    Style("sport", 0.20, (
        _slot("top", 0.85, "t-shirt"),
        _slot("bottom", 0.65, "trouser"),
        _slot("shoes", 0.90, "sneaker"),
        _slot("bag", 0.30, "bag"),
    )),
    Style("evening", 0.20, (
        _slot("dress", 0.90, "dress"),
        _slot("shoes", 0.80, ("sandal", 0.60), ("ankle-boot", 0.40)),
        _slot("bag", 0.70, "bag"),
    )),
)


def check_grammar(grammar: str) -> None:
    if grammar not in GRAMMARS:
        raise InputError(f"grammar: unknown grammar {grammar!r} (choose from {', '.join(GRAMMARS)})")


def _style_set_distribution(style: Style) -> Dict[FrozenSet[str], float]:
    """Exact distribution of the item set a style's slots produce (before off-style)."""
    dist: Dict[FrozenSet[str], float] = {frozenset(): 1.0}
    for slot in style.slots:
        new: Dict[FrozenSet[str], float] = {}
        for items, p in dist.items():
            new[items] = new.get(items, 0.0) + p * (1.0 - slot.probability)
            for label, odds in slot.choices:
                key = items | {label}
                new[key] = new.get(key, 0.0) + p * slot.probability * odds
        dist = new
    empty = dist.pop(frozenset(), 0.0)
    return {items: p / (1.0 - empty) for items, p in dist.items()}


def _outfit_set_distribution() -> Dict[FrozenSet[str], float]:
    """Exact distribution of a scene's label set under the outfit grammar."""
    total_weight = sum(style.weight for style in OUTFIT_STYLES)
    out: Dict[FrozenSet[str], float] = {}
    for style in OUTFIT_STYLES:
        weight = style.weight / total_weight
        others = [label for label in OUTFIT_LABELS if label not in style.items]
        for items, p in _style_set_distribution(style).items():
            if len(items) < MAX_ITEMS and others:
                out[items] = out.get(items, 0.0) + weight * p * (1.0 - OFF_STYLE_PROBABILITY)
                for other in others:
                    key = items | {other}
                    out[key] = out.get(key, 0.0) + weight * p * OFF_STYLE_PROBABILITY / len(others)
            else:
                out[items] = out.get(items, 0.0) + weight * p
    return out


def _outfit_marginals() -> np.ndarray:
    marg = np.zeros(len(OUTFIT_LABELS))
    for items, p in _outfit_set_distribution().items():
        for label in items:
            marg[OUTFIT_LABELS.index(label)] += p
    return marg


def _subset_bits() -> np.ndarray:
    """Bool [m, 10]: every label subset with 1..MAX_ITEMS labels."""
    n = len(OUTFIT_LABELS)
    bits = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)
    sizes = bits.sum(axis=1)
    return bits[(sizes >= 1) & (sizes <= MAX_ITEMS)]


def _truncated_marginals(q: np.ndarray, bits: np.ndarray) -> np.ndarray:
    logp = bits @ np.log(q) + (~bits) @ np.log1p(-q)
    w = np.exp(logp - logp.max())
    return (w / w.sum()) @ bits


def _independent_probabilities() -> np.ndarray:
    """Bernoulli probabilities whose 1..4-truncated marginals equal the outfit marginals."""
    target = _outfit_marginals()
    bits = _subset_bits()
    logit_target = np.log(target) - np.log1p(-target)
    logit = logit_target.copy()
    for _ in range(1000):
        q = 1.0 / (1.0 + np.exp(-logit))
        marg = _truncated_marginals(q, bits)
        if np.max(np.abs(marg - target)) < 1e-12:
            break
        logit += logit_target - (np.log(marg) - np.log1p(-marg))
    return 1.0 / (1.0 + np.exp(-logit))


def label_frequencies(grammar: str = "outfits") -> Dict[str, float]:
    """Exact fraction of scenes that carry each label under a grammar."""
    check_grammar(grammar)
    if grammar == "outfits":
        marg = _outfit_marginals()
    else:
        marg = _truncated_marginals(_independent_probabilities(), _subset_bits())
    return {label: float(p) for label, p in zip(OUTFIT_LABELS, marg)}


def _outfit_sampler() -> Callable[[np.random.Generator], List[str]]:
    weights = np.array([style.weight for style in OUTFIT_STYLES], dtype=np.float64)
    weights /= weights.sum()

    def sample(rng: np.random.Generator) -> List[str]:
        style = OUTFIT_STYLES[int(rng.choice(len(OUTFIT_STYLES), p=weights))]
        items: List[str] = []
        while not items:
            for slot in style.slots:
                if rng.random() < slot.probability:
                    if len(slot.choices) == 1:
                        label = slot.choices[0][0]
                    else:
                        odds = np.array([o for _, o in slot.choices], dtype=np.float64)
                        label = slot.choices[int(rng.choice(len(odds), p=odds / odds.sum()))][0]
                    if label not in items:
                        items.append(label)
        if len(items) < MAX_ITEMS and rng.random() < OFF_STYLE_PROBABILITY:
            others = [label for label in OUTFIT_LABELS if label not in style.items]
            if others:
                items.append(others[int(rng.integers(len(others)))])
        return items

    return sample


def _independent_sampler() -> Callable[[np.random.Generator], List[str]]:
    q = _independent_probabilities()

    def sample(rng: np.random.Generator) -> List[str]:
        while True:
            present = np.flatnonzero(rng.random(len(q)) < q)
            if 1 <= len(present) <= MAX_ITEMS:
                return [OUTFIT_LABELS[i] for i in rng.permutation(present)]

    return sample


def make_label_sampler(grammar: str = "outfits") -> Callable[[np.random.Generator], List[str]]:
    """Returns ``sample(rng) -> [label, ...]`` drawing one scene's labels (1-4, distinct)."""
    check_grammar(grammar)
    return _outfit_sampler() if grammar == "outfits" else _independent_sampler()


def _style_table() -> str:
    lines = [
        "style    weight  slot     p(slot)  item(s)",
        "-------  ------  -------  -------  -----------------------------",
    ]
    for style in OUTFIT_STYLES:
        for i, slot in enumerate(style.slots):
            if len(slot.choices) == 1:
                items = slot.choices[0][0]
            else:
                items = " / ".join(f"{label} {odds:.2f}" for label, odds in slot.choices)
            head = f"{style.name:<7}  {style.weight:<6.2f}" if i == 0 else " " * 15
            lines.append(f"{head}  {slot.name:<7}  {slot.probability:<7.2f}  {items}")
    return "\n".join(lines)


def describe_grammar() -> str:
    """A text description of the outfit grammar and the label frequencies it implies."""
    freq = label_frequencies("outfits")
    dist = _outfit_set_distribution()
    mean_items = sum(len(items) * p for items, p in dist.items())
    lines = [
        "Fashion-MNIST outfits: each scene picks a style by weight, fills each slot with",
        "probability p(slot) (redrawing if none was filled), then with probability "
        f"{OFF_STYLE_PROBABILITY:.2f}",
        "adds one item from outside the style (if it has fewer than 4 items).",
        "",
        _style_table(),
        "",
        f"Items per scene: 1-{MAX_ITEMS}, {mean_items:.2f} on average.",
        "Label frequencies (fraction of scenes; grammar='independent' draws each label",
        "independently with these same frequencies, 1-4 labels per scene):",
    ]
    lines += [f"  {label:<11} {freq[label]:.3f}" for label in OUTFIT_LABELS]
    return "\n".join(lines)
