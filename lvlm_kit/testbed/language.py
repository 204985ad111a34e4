"""The world's wider language: the generic text the testbed's base language model reads.

Besides the scene texts of :mod:`~lvlm_kit.testbed.world`, the base model (the testbed's
"Vicuna") is trained on sentences drawn from a small grammar over a lexicon of everyday
words: people doing things in places, animals, food, weather, plus paraphrases of scene
descriptions with synonyms ("the picture shows a little crimson ship") and short facts
that state the planted co-occurrences in words ("fish often swim near boats"). This gives
the testbed a vocabulary of over a thousand words, so chance is about 1/1000 and a lens
distribution that has not found its answer spreads its mass over many words, as a real
LLM's does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .world import PLURALS, Group, Scene, noun_phrase

NAMES = (
    "anna ben clara david emma felix grace henry iris jack kate leo maya nina oscar paul rosa "
    "sam tina victor wendy yara zoe adam bella carl diana eric fiona george hannah ivan julia "
    "karl lucy mark nora owen piper quinn ruth simon tara umar vera will xena yusuf amir bruno "
    "chloe dora elias freya hugo ines jonas lena milo"
).split()
THINGS = (
    "book cup chair table lamp door window key bag hat coat shoe sock bed clock mirror pen "
    "pencil paper letter card bottle bowl plate spoon fork basket bucket ladder rope wheel bell "
    "drum flute guitar piano candle blanket pillow carpet curtain brush comb towel umbrella "
    "wallet coin ring necklace button needle hammer nail saw shovel rake fence gate wall roof "
    "floor garden path road bridge tower castle church school shop market station train car bus "
    "bicycle truck plane ship rocket wagon cart sled map compass camera radio phone computer "
    "screen ticket gift toy doll puzzle robot balloon flag sail anchor net oar paddle jar lid "
    "shelf drawer cabinet sofa stool bench desk notebook envelope stamp crate cube sphere "
    "cottage cabin hut"
).split()
ANIMALS = (
    "cat dog horse cow goat pig duck chicken rabbit rat fox wolf bear owl eagle hawk crow "
    "sparrow swan frog toad snake turtle lizard bee ant spider butterfly moth beetle whale "
    "dolphin shark seal crab lobster octopus squirrel hedgehog badger otter beaver camel zebra "
    "lion tiger elephant monkey giraffe"
).split()
PLACES = (
    "park forest lake river sea beach island mountain hill valley field meadow farm village "
    "town city harbour port bay cave desert jungle swamp pond stream waterfall cliff shore "
    "coast kitchen bedroom hall library museum hospital office factory bakery cafe restaurant "
    "hotel theatre stadium airport zoo playground square street alley attic cellar barn"
).split()
FOODS = (
    "apple bread cheese milk tea coffee soup rice pasta pizza cake cookie pie honey jam butter "
    "egg salad carrot potato tomato onion lemon banana grape cherry pear plum peach berry nut "
    "corn bean pea sugar salt chocolate juice"
).split()
PEOPLE = (
    "boy girl baby friend teacher farmer sailor doctor baker painter king queen prince "
    "princess soldier pilot driver student neighbour stranger guard captain cook merchant poet "
    "singer dancer"
).split()
NATURE = (
    "sun sky cloud rain snow wind storm fog ice stone rock sand dust mud branch root seed "
    "grass bush flame fire smoke water wave tide shadow light dawn dusk noon night morning "
    "evening spring summer autumn winter season weather"
).split()
MATERIALS = "wood iron steel gold silk wool cotton leather clay glass brick copper marble".split()
BODY = "head hand arm leg eye ear nose mouth hair finger knee shoulder neck face voice".split()
IDEAS = (
    "joy fear hope anger luck idea dream story song poem question lesson plan secret promise "
    "reason game race team"
).split()
VERBS_T = (
    "saw found took gave made built painted carried dropped lifted pushed pulled opened closed "
    "cleaned washed broke fixed bought sold sent wrote read drew held hid kept lost moved packed "
    "picked placed watched visited followed chased caught threw kicked touched counted named "
    "noticed remembered forgot liked loved wanted needed shared borrowed filled emptied covered "
    "cut cooked baked ate tasted heard called helped met thanked taught showed asked answered"
).split()
VERBS_I = (
    "walked ran jumped swam flew sat stood slept woke laughed cried smiled sang danced waited "
    "rested arrived returned stayed wandered climbed fell rolled floated sank shone glowed grew "
    "vanished appeared hurried paused worked played travelled listened whispered shouted"
).split()
VERBS_3 = (
    "likes lives grows swims flies eats drinks sleeps runs walks sings reads builds paints "
    "sells buys keeps needs wants makes finds sees hears knows rests works plays waits stays "
    "carries holds opens shines falls rises sits stands floats"
).split()
ADJECTIVES = (
    "old young new tall short long wide narrow heavy bright dark warm cold hot cool wet dry "
    "soft hard smooth rough clean dirty quiet loud happy sad angry calm brave shy kind clever "
    "silly busy lazy hungry thirsty tired sleepy strong weak rich poor cheap famous strange "
    "plain fancy round flat sharp thick thin deep shallow empty full fresh ripe sweet sour "
    "bitter salty golden silver wooden shiny dusty broken tiny huge gentle wild tame fast slow "
    "early late lucky funny pretty ugly proud noisy curious careful friendly lonely distant "
    "nearby ancient modern simple hidden crowded sunny rainy windy snowy foggy cloudy little "
    "big white black grey brown pink"
).split()
ADVERBS = (
    "quickly slowly quietly loudly happily sadly carefully gently suddenly often never always "
    "sometimes rarely soon later already again together alone almost very quite really just "
    "still once twice outside inside upstairs downstairs away home back everywhere"
).split()
PREPOSITIONS = (
    "in on at by with under over behind beside between near into across along around through "
    "past after before during toward"
).split()
TIMES = (
    "today yesterday tomorrow monday tuesday wednesday thursday friday saturday sunday january "
    "february march april may june july august september october november december"
).split()
NUMBERS = "four five six seven eight nine ten eleven twelve twenty".split()
#: Words for positions on a board.
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
FUNCTION = (
    "he she they we i you it his her their our my your its who which when where while because "
    "but or so then also not said that was were has had will can see shows picture photo "
    "scene contains like find up down corner side row column about"
).split()
#: Synonyms used in paraphrased descriptions (never in the LVLM's own answers).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("little", "tiny"),
    "large": ("big", "huge"),
    "red": ("crimson",),
    "green": ("emerald",),
    "blue": ("azure",),
    "yellow": ("golden",),
    "purple": ("violet",),
    "orange": ("amber",),
    "ball": ("sphere",),
    "box": ("crate", "cube"),
    "tent": ("shelter",),
    "boat": ("ship",),
    "house": ("cottage", "cabin"),
    "tree": ("oak",),
    "fish": ("trout",),
}
#: Facts stating the planted co-occurrences and the objects' nature in words.
FACTS = (
    "fish often swim near boats.",
    "a boat on the water often has fish around it.",
    "the sailor saw fish beside the boat.",
    "where there is a boat, there are often fish.",
    "a house often stands beside a tree.",
    "trees grow near houses.",
    "the farmer built a house under the old tree.",
    "where there is a tree, a house is near.",
    "a kite flies in the sky.",
    "a moon shines at night.",
    "a star shines in the dark sky.",
    "a tent stands in a field.",
    "a flower grows in the garden.",
    "a ball rolls on the floor.",
    "a heart is a sign of love.",
    "a box holds things.",
)
PLURAL_EXCEPTIONS = {
    "mouse": "mice",
    "child": "children",
    "man": "men",
    "woman": "women",
    "foot": "feet",
    "tooth": "teeth",
    "leaf": "leaves",
    "knife": "knives",
    "wolf": "wolves",
    "shelf": "shelves",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "person": "people",
    "loaf": "loaves",
}


def plural(noun: str) -> str:
    """English plural of a lexicon noun (regular rules plus :data:`PLURAL_EXCEPTIONS`)."""
    if noun in PLURAL_EXCEPTIONS:
        return PLURAL_EXCEPTIONS[noun]
    if noun in PLURALS:
        return PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")) or noun in ("potato", "tomato"):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


COUNTABLE = (*THINGS, *ANIMALS, *FOODS, *PEOPLE, "tree", "flower", "stone", "cloud", "wave")


def lexicon() -> set[str]:
    """Every word the generic text can use."""
    words = {*NAMES, *THINGS, *ANIMALS, *PLACES, *FOODS, *PEOPLE, *NATURE, *MATERIALS, *BODY}
    words |= {*IDEAS, *VERBS_T, *VERBS_I, *VERBS_3, *ADJECTIVES, *ADVERBS, *PREPOSITIONS}
    words |= {*TIMES, *NUMBERS, *ROWS, *COLUMNS, *FUNCTION, "the", "a", "an", "and", "is"}
    words |= {"are", "there", "of", "this", "image", ",", ".", "?", "in", "often", "no"}
    words |= {plural(n) for n in COUNTABLE}
    words |= {s for syns in SYNONYMS.values() for s in syns}
    words |= {w for fact in FACTS for w in fact.replace(".", " .").replace(",", " ,").split()}
    return words


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def generic_sentence(rng: random.Random) -> str:
    """One sentence of everyday text from the grammar (a distractor for the scene texts)."""
    c = rng.choice
    adj, thing, place = c(ADJECTIVES), c(THINGS), c(PLACES)
    kind = rng.randrange(9)
    if kind == 0:
        where = f"{c(PREPOSITIONS)} the {place}"
        return f"{c(NAMES)} {c(VERBS_T)} {_article(adj)} {adj} {thing} {where}."
    if kind == 1:
        return f"the {c(ANIMALS)} {c(VERBS_I)} {c(ADVERBS)} {c(PREPOSITIONS)} the {place}."
    if kind == 2:
        n = c(NUMBERS)
        return f"on {c(TIMES)}, {c(NAMES)} and {c(NAMES)} {c(VERBS_T)} {n} {adj} {plural(thing)}."
    if kind == 3:
        return f"the {c(PEOPLE)} {c(VERBS_3)} {plural(c(FOODS))} and {plural(c(FOODS))}."
    if kind == 4:
        return f"the {place} was {c(ADJECTIVES)} and {c(ADJECTIVES)} in the {c(NATURE)}."
    if kind == 5:
        return f"{c(NAMES)} said that the {c(MATERIALS)} {thing} was {c(ADJECTIVES)}."
    if kind == 6:
        return f"the {c(PEOPLE)} {c(VERBS_T)} {c(('his', 'her', 'their'))} {c(BODY)} {c(ADVERBS)}."
    if kind == 7:
        return f"{c(NAMES)} had a {c(IDEAS)} about the {c(ANIMALS)} of the {place}."
    return c(FACTS)


def paraphrase(scene: Scene, rng: random.Random) -> str:
    """A description of ``scene`` in other words: a different opening and synonyms."""

    def phrase(g: Group) -> str:
        words = noun_phrase(g).split()
        return " ".join(
            rng.choice(SYNONYMS[w]) if w in SYNONYMS and g.count == 1 and rng.random() < 0.5 else w
            for w in words
        )

    phrases = [phrase(g) for g in scene.groups]
    body = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
    opening = rng.choice(("the picture shows", "i can see", "this photo contains", "the scene has"))
    return f"{opening} {body}."


def generic_text(rng: random.Random, n_sentences: int = 3) -> str:
    """A short paragraph of :func:`generic_sentence` s."""
    return " ".join(generic_sentence(rng) for _ in range(n_sentences))


__all__: Sequence[str] = [
    "COLUMNS",
    "ROWS",
    "generic_sentence",
    "generic_text",
    "lexicon",
    "paraphrase",
    "plural",
]
