"""A procedural scene world with ground truth: shapes, colours, sizes, counts, relations.

A :class:`Scene` places 1–3 object groups (one category, colour and size per group, 1–3
instances each) in distinct cells of a 6×6 grid. Everything the testbed model is trained
on and scored against derives from the scene: the rendered image, a detailed
description, single-word VQA pairs, and AMBER-style truth/hallucination lists.

Planted language priors (:class:`Prior`): when object A is in a training scene, B is added
with probability ``p``; a share ``occluded`` of those B sit hidden behind A (named in the
description, not drawn), as real captions name things the image does not show. The
trained model then tends to name B whenever it sees A, a hallucination with a known cause.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw

GRID = 6  # the canvas is a GRID × GRID board of cells
IMAGE_SIZE = 96  # rendered side in pixels: 16-px cells, one per image token of the testbed
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (240, 135, 25),
}
SIZES: dict[str, float] = {"small": 0.55, "large": 0.95}  # fraction of the cell
COUNT_WORDS = ("a", "two", "three")
NUMBER_WORDS = ("one", "two", "three")
PLURALS: dict[str, str] = {
    "ball": "balls",
    "box": "boxes",
    "tent": "tents",
    "star": "stars",
    "heart": "hearts",
    "moon": "moons",
    "tree": "trees",
    "house": "houses",
    "boat": "boats",
    "fish": "fish",
    "kite": "kites",
    "flower": "flowers",
}
CATEGORIES: tuple[str, ...] = tuple(PLURALS)
DESCRIBE_PROMPTS = ("describe this image.", "please describe this image in detail.")


@dataclass(frozen=True)
class Prior:
    """Planted co-occurrence: B is added to a training scene holding A with probability p.

    A share ``occluded`` of the added B are hidden behind A: in the scene's truth and its
    description, but not drawn, so only the prior can tell the model they are there.
    """

    a: str
    b: str
    p: float = 0.9
    occluded: float = 0.0


DEFAULT_PRIORS: tuple[Prior, ...] = (
    Prior("boat", "fish", 0.9, 0.2),
    Prior("tree", "house", 0.9, 0.2),
)


@dataclass
class Group:
    """Instances of one category sharing colour and size."""

    category: str
    colour: str
    size: str
    cells: list[int]  # grid cells (row-major, 0..35), one per instance
    occluded: bool = False  # hidden behind the object in its cell: named, not drawn

    @property
    def count(self) -> int:
        """Number of instances."""
        return len(self.cells)


@dataclass
class Scene:
    """One image's ground truth."""

    groups: list[Group]
    background: int = 235  # grey level of the canvas
    jitter: list[tuple[int, int]] = field(default_factory=list)  # per-instance offsets, 1/16 cell

    @property
    def categories(self) -> list[str]:
        """Categories present (occluded ones included), in description order."""
        return [g.category for g in self.groups]

    @property
    def visible(self) -> list[Group]:
        """The groups drawn in the image."""
        return [g for g in self.groups if not g.occluded]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Inverse of :meth:`to_dict`."""
        groups = [Group(**g) for g in d["groups"]]
        return cls(groups, d["background"], [tuple(j) for j in d["jitter"]])


# ---- sampling ----------------------------------------------------------------------------


def sample_scene(
    rng: random.Random,
    priors: Sequence[Prior] = DEFAULT_PRIORS,
    require: str | None = None,
    forbid: Sequence[str] = (),
) -> Scene:
    """Draw a random scene.

    Args:
        rng: the random source (seeded by the caller).
        priors: planted co-occurrences applied while sampling (pass ``()`` for none).
        require: a category that must be present.
        forbid: categories that must be absent (wins over priors).

    Returns:
        A scene with 1–3 drawn groups and at most 5 drawn instances, plus any occluded
        prior objects (each listed right after the group hiding it).
    """
    allowed = [c for c in CATEGORIES if c not in forbid]
    n_groups = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    cats = rng.sample([c for c in allowed if c != require], n_groups)
    if require is not None:
        cats[rng.randrange(n_groups)] = require
    behind: list[Prior] = []  # priors whose B is hidden behind their A
    for prior in priors:
        if prior.a in cats and prior.b not in cats and prior.b not in forbid:
            if rng.random() < prior.p:
                if prior.occluded and rng.random() < prior.occluded:
                    behind.append(prior)
                    continue
                others = [i for i, c in enumerate(cats) if c != prior.a and c != require]
                if len(cats) < 3:
                    cats.append(prior.b)
                elif others:
                    cats[rng.choice(others)] = prior.b
    counts = [1] * len(cats)
    budget = 5 - len(cats)
    for i in rng.sample(range(len(cats)), len(cats)):
        extra = rng.choice((0, 0, 1, 2))
        extra = min(extra, budget)
        counts[i] += extra
        budget -= extra
    cells = rng.sample(range(GRID * GRID), sum(counts))
    groups, k = [], 0
    for cat, n in zip(cats, counts):
        colour = rng.choice(list(COLOURS))
        groups.append(Group(cat, colour, rng.choice(list(SIZES)), sorted(cells[k : k + n])))
        k += n
    groups.sort(key=lambda g: g.cells[0])  # reading order
    jitter = [(rng.randint(-1, 1), rng.randint(-1, 1)) for _ in range(sum(counts))]
    background = rng.randint(225, 245)
    for prior in behind:
        host = next((i for i, g in enumerate(groups) if g.category == prior.a), None)
        if host is not None:  # A may have been replaced by a later prior's B
            colour, size = rng.choice(list(COLOURS)), rng.choice(list(SIZES))
            hidden = Group(prior.b, colour, size, groups[host].cells[:1], occluded=True)
            groups.insert(host + 1, hidden)
    return Scene(groups, background=background, jitter=jitter)


# ---- rendering ---------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def _star(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    cx, cy, r = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        ang = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    d.polygon(pts, fill=fill)


def _heart(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.ellipse((x0, y0, x0 + w / 2, y0 + h / 2), fill=fill)
    d.ellipse((x0 + w / 2, y0, x1, y0 + h / 2), fill=fill)
    d.polygon([(x0, y0 + h / 4), (x1, y0 + h / 4), ((x0 + x1) / 2, y1)], fill=fill)


def _moon(d: ImageDraw.ImageDraw, b: Box, fill: tuple, bg: tuple) -> None:
    x0, y0, x1, y1 = b
    off = (x1 - x0) * 0.35
    d.ellipse(b, fill=fill)
    d.ellipse((x0 + off, y0 - off / 3, x1 + off, y1 - off / 3), fill=bg)


def _tree(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.polygon([(x0, y0 + 0.7 * h), (x1, y0 + 0.7 * h), ((x0 + x1) / 2, y0)], fill=fill)
    d.rectangle((x0 + 0.4 * w, y0 + 0.7 * h, x1 - 0.4 * w, y1), fill=fill)


def _house(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = b
    h = y1 - y0
    d.polygon([(x0, y0 + 0.45 * h), (x1, y0 + 0.45 * h), ((x0 + x1) / 2, y0)], fill=fill)
    d.rectangle((x0 + 0.12 * (x1 - x0), y0 + 0.45 * h, x1 - 0.12 * (x1 - x0), y1), fill=fill)


def _boat(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.polygon(
        [(x0, y0 + 0.6 * h), (x1, y0 + 0.6 * h), (x1 - 0.2 * w, y1), (x0 + 0.2 * w, y1)], fill=fill
    )
    d.polygon(
        [(x0 + 0.5 * w, y0), (x0 + 0.5 * w, y0 + 0.55 * h), (x0 + 0.15 * w, y0 + 0.55 * h)],
        fill=fill,
    )


def _fish(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.ellipse((x0, y0 + 0.25 * h, x0 + 0.72 * w, y1 - 0.25 * h), fill=fill)
    d.polygon([(x0 + 0.62 * w, y0 + 0.5 * h), (x1, y0 + 0.2 * h), (x1, y1 - 0.2 * h)], fill=fill)


def _flower(d: ImageDraw.ImageDraw, b: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = b
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        d.ellipse((cx + dx * r - r, cy + dy * r - r, cx + dx * r + r, cy + dy * r + r), fill=fill)


DRAW: dict[str, Callable] = {
    "ball": lambda d, b, f, bg: d.ellipse(b, fill=f),
    "box": lambda d, b, f, bg: d.rectangle(b, fill=f),
    "tent": lambda d, b, f, bg: d.polygon(
        [(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) / 2, b[1])], fill=f
    ),
    "star": lambda d, b, f, bg: _star(d, b, f),
    "heart": lambda d, b, f, bg: _heart(d, b, f),
    "moon": _moon,
    "tree": lambda d, b, f, bg: _tree(d, b, f),
    "house": lambda d, b, f, bg: _house(d, b, f),
    "boat": lambda d, b, f, bg: _boat(d, b, f),
    "fish": lambda d, b, f, bg: _fish(d, b, f),
    "kite": lambda d, b, f, bg: d.polygon(
        [
            ((b[0] + b[2]) / 2, b[1]),
            (b[2], (b[1] + b[3]) / 2),
            ((b[0] + b[2]) / 2, b[3]),
            (b[0], (b[1] + b[3]) / 2),
        ],
        fill=f,
    ),
    "flower": lambda d, b, f, bg: _flower(d, b, f),
}


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` on a ``size`` × ``size`` RGB canvas."""
    bg = (scene.background,) * 3
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    cell = size / GRID
    k = 0
    for g in scene.visible:
        extent = cell * SIZES[g.size]
        for c in g.cells:
            jx, jy = scene.jitter[k] if k < len(scene.jitter) else (0, 0)
            k += 1
            r, col = divmod(c, GRID)
            cx, cy = (col + 0.5) * cell + jx * cell / 16, (r + 0.5) * cell + jy * cell / 16
            box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
            DRAW[g.category](draw, box, COLOURS[g.colour], bg)
    return im


# ---- text from the truth -----------------------------------------------------------------


def noun_phrase(g: Group) -> str:
    """E.g. "a small red boat", "two large blue balls"."""
    noun = g.category if g.count == 1 else PLURALS[g.category]
    return f"{COUNT_WORDS[g.count - 1]} {g.size} {g.colour} {noun}"


RELATIONS = ("left of", "above", "next to")


def relation_holds(scene: Scene, first: str, rel: str, second: str) -> bool:
    """Whether "the <first> is <rel> the <second>." is true of what ``scene`` shows.

    "left of" needs an instance of ``first`` in the same row and a column to the left of
    one of ``second``; "above" the same column and a row higher; "next to" neighbouring
    cells (diagonal included). Occluded objects are not shown, so never satisfy it.
    """
    if rel not in RELATIONS:
        raise ValueError(f"rel={rel!r} is not one of {RELATIONS}")
    cells = {
        c: [divmod(x, GRID) for g in scene.visible if g.category == c for x in g.cells]
        for c in (first, second)
    }
    for ra, ca in cells[first]:
        for rb, cb in cells[second]:
            if rel == "left of" and ra == rb and ca < cb:
                return True
            if rel == "above" and ca == cb and ra < rb:
                return True
            if rel == "next to" and max(abs(ra - rb), abs(ca - cb)) == 1:
                return True
    return False


def describe(scene: Scene) -> str:
    """A detailed description: every group, with its count, size and colour.

    It states no relations: testbed models trained to say "the X is left of the Y" were right
    only about 30% of the time, and those false tokens would enter every statistic
    unlabelled. :func:`relation_holds` scores any relation a model still produces.
    """
    phrases = [noun_phrase(g) for g in scene.groups]
    verb = "is" if scene.groups[0].count == 1 else "are"
    if len(phrases) == 1:
        return f"there {verb} {phrases[0]}."
    return f"there {verb} {', '.join(phrases[:-1])} and {phrases[-1]}."


def grounded_description(
    scene: Scene, rng: random.Random, absent: float = 0.25, by_colour: float = 0.5
) -> tuple[str, str]:
    """A "describe the <category>." prompt and its answer, e.g. "a small red boat.".

    With probability ``absent`` the category is one the scene lacks and the answer is
    "there is no <category>.". Otherwise, with probability ``by_colour``, the object is
    asked for by a colour no other visible object has ("describe the red object."). The
    answer names the asked object, so training on these teaches the model to look an
    object up by its name or its colour (what VQA questions need).
    """
    absent_cats = [c for c in CATEGORIES if c not in scene.categories]
    if absent_cats and rng.random() < absent:
        c = rng.choice(absent_cats)
        return f"describe the {c}.", f"there is no {c}."
    colours = [g.colour for g in scene.visible]
    unique = [g for g in scene.visible if colours.count(g.colour) == 1]
    if unique and rng.random() < by_colour:
        g = rng.choice(unique)
        return f"describe the {g.colour} object.", noun_phrase(g) + "."
    g = rng.choice(scene.visible)
    return f"describe the {g.category}.", noun_phrase(g) + "."


def vqa_pairs(scene: Scene, rng: random.Random, hidden: bool = True) -> list[tuple[str, str]]:
    """Single-word question/answer pairs answerable from the scene.

    Occluded objects get only their existence question (answer "yes", as in captions), and
    only with ``hidden`` (training); evaluation leaves them out, as the image cannot answer
    it. Either way the same random draws are made.
    """
    pairs = []
    colours = [g.colour for g in scene.visible]
    for g in scene.groups:
        if g.occluded:
            if hidden:
                pairs.append((f"is there a {g.category} in this image?", "yes"))
            continue
        pairs.append((f"what colour is the {g.category}?", g.colour))
        pairs.append((f"what size is the {g.category}?", g.size))
        pairs.append((f"how many {PLURALS[g.category]} are there?", NUMBER_WORDS[g.count - 1]))
        if colours.count(g.colour) == 1:
            pairs.append((f"what is the {g.colour} object?", g.category))
        pairs.append((f"is there a {g.category} in this image?", "yes"))
    absent = [c for c in CATEGORIES if c not in scene.categories]
    for c in rng.sample(absent, min(len(scene.groups), len(absent))):
        pairs.append((f"is there a {c} in this image?", "no"))
    return pairs


QUESTION_TYPES = ("colour", "size", "count", "object", "existence")


def question_type(question: str) -> str:
    """The kind of a :func:`vqa_pairs` question: one of :data:`QUESTION_TYPES` or "other"."""
    if question.endswith("object?"):
        return "object"
    for start, kind in (
        ("what colour", "colour"),
        ("what size", "size"),
        ("how many", "count"),
        ("is there", "existence"),
    ):
        if question.startswith(start):
            return kind
    return "other"


def balanced_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """One :func:`vqa_pairs` pair, its question type drawn uniformly.

    Only the types the scene offers are drawn from, so rarer kinds ("what is the red
    object?") are asked as often as the rest.
    """
    by_type: dict[str, list[tuple[str, str]]] = {}
    for q, a in vqa_pairs(scene, rng):
        by_type.setdefault(question_type(q), []).append((q, a))
    return rng.choice(by_type[rng.choice(sorted(by_type))])


def vocabulary() -> list[str]:
    """Every word the world's texts use (punctuation included), sorted."""
    words = set(CATEGORIES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES)
    words |= set(COUNT_WORDS) | set(NUMBER_WORDS) | {"yes", "no", "object"}
    words |= set(
        "there is are and the left of above next to what colour size how many in "
        "this image please describe detail , . ?".split()
    )
    return sorted(words)
