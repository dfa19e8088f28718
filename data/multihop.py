"""Multi-hop questions over a synthetic knowledge graph (LongTraceRL-style), offline and seeded.

The graph: entities with invented names (people, cities, countries, companies, universities) and
the ten typed relations of RELATIONS (born_in: person -> city, founded_by: company -> person,
capital: country -> city, ...), each with the sentence that states a fact and the noun phrase that
nests into questions. Relations are functional (each head has exactly one tail per relation), so a
composed question has one answer; a country's capital is one of its own cities.

A question is a random walk of `hops` edges that never revisits an entity, phrased as one nested
question ("What is the country of the birthplace of Ava Rendal?") whose answer is the walk's last
entity. Its context is one passage (one sentence) per fact: the gold passages (one per hop) plus
distractors, labelled by tier and drawn round-robin over the tiers so that each tier is present
when the budget allows:

    0  gold: the walk's own facts
    1  same entities, other relations: facts that touch an entity of the walk
    2  same relation, other entities: near-misses (e.g. someone else's birthplace)
    3  unrelated facts

then shuffled, up to `num_passages` passages and, optionally, `max_context_chars` characters.

A row: `question` (the passages and the question, what the prompt is built from), `answer` (the
last entity's name), `path` (the intermediate entities in walk order: the start is in the
question and the answer is `answer`, so a 3-hop walk has 2), `hops`, `solution` (one fact per
line in walk order, then `Final answer: NAME`), and `passages` (the context as
[{"text", "tier"}] in prompt order, for tests and analysis; rewards ignore it).

The few-shot exemplars of data/prompts.py are GSM8K arithmetic with GSM8K's answer line: they
would teach the wrong format here, so this task takes n_shot=0 and ANSWER_INSTRUCTION instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ANSWER_PREFIX = "Final answer:"
ANSWER_INSTRUCTION = (
    "Answer the question using the passages. Follow the chain of facts one hop at a time and name "
    "each entity you pass through. End your reply with a last line of the form "
    f"'{ANSWER_PREFIX} NAME', where NAME is exactly one entity name from the passages."
)
GOLD, SAME_ENTITY, SAME_RELATION, UNRELATED = 0, 1, 2, 3  # passage tiers
MIN_ENTITIES = 25  # enough for every type to have a few members


@dataclass(frozen=True)
class Relation:
    head: str  # entity type of the head
    tail: str  # entity type of the tail
    sentence: str  # the passage stating the fact, with {h} and {t}
    phrase: str  # a noun phrase for the tail, with {h}: nests into composed questions


RELATIONS = {
    "born_in": Relation("person", "city", "{h} was born in {t}.", "the birthplace of {h}"),
    "works_for": Relation("person", "company", "{h} works for {t}.", "the employer of {h}"),
    "studied_at": Relation("person", "university", "{h} studied at {t}.", "the alma mater of {h}"),
    "headquartered_in": Relation("company", "city", "{h} is headquartered in {t}.", "the headquarters city of {h}"),
    "founded_by": Relation("company", "person", "{t} founded {h}.", "the founder of {h}"),
    "located_in": Relation("city", "country", "{h} is located in {t}.", "the country of {h}"),
    "capital": Relation("country", "city", "{t} is the capital of {h}.", "the capital of {h}"),
    "mayor": Relation("city", "person", "{t} is the mayor of {h}.", "the mayor of {h}"),
    "campus_in": Relation("university", "city", "{h} has its campus in {t}.", "the campus city of {h}"),
    "president": Relation("university", "person", "{t} is the president of {h}.", "the president of {h}"),
}
ENTITY_TYPES = ("person", "city", "country", "company", "university")


@dataclass(frozen=True)
class Fact:
    head: str
    relation: str
    tail: str

    def sentence(self) -> str:
        return RELATIONS[self.relation].sentence.format(h=self.head, t=self.tail)


@dataclass(frozen=True)
class Graph:
    """Entities (name -> type, in a fixed order), facts, and each entity's outgoing facts."""

    types: dict[str, str]
    facts: tuple[Fact, ...]
    outgoing: dict[str, tuple[Fact, ...]]


def make_graph(types: dict[str, str], facts: list[Fact]) -> Graph:
    """A checked graph: known types and relations, typed ends, at most one tail per (head, relation)."""
    for name, kind in types.items():
        if kind not in ENTITY_TYPES:
            raise ValueError(f"entity {name!r} has type {kind!r}; use one of {ENTITY_TYPES}")
    seen = set()
    for fact in facts:
        relation = RELATIONS.get(fact.relation)
        if relation is None:
            raise ValueError(f"{fact}: unknown relation {fact.relation!r}; use one of {sorted(RELATIONS)}")
        ends = (types.get(fact.head), types.get(fact.tail))
        if ends != (relation.head, relation.tail):
            raise ValueError(
                f"{fact}: {fact.relation} links a {relation.head} to a {relation.tail}, got {ends}; "
                "declare both entities in `types` with those types"
            )
        if (fact.head, fact.relation) in seen:
            raise ValueError(f"{fact}: {fact.head!r} already has a {fact.relation!r} fact; relations are functional")
        seen.add((fact.head, fact.relation))
    outgoing = {name: [] for name in types}
    for fact in facts:
        outgoing[fact.head].append(fact)
    return Graph(dict(types), tuple(facts), {name: tuple(out) for name, out in outgoing.items()})


# Invented names: syllables, then a per-type pattern. Letters and spaces only, so normalization
# (rewards/multihop.py) cannot merge two names.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "nd")


def _word(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (word + rng.choice(_CODAS)).capitalize()


def _name(rng: random.Random, kind: str) -> str:
    if kind == "person":
        return f"{_word(rng, 2)} {_word(rng, 2)}"
    if kind == "city":
        return _word(rng, 2) + rng.choice(("ford", "holm", "vale", "mere", "port", "grad"))
    if kind == "country":
        return _word(rng, 2) + rng.choice(("ia", "land", "ora", "istan"))
    if kind == "company":
        return f"{_word(rng, 2)} {rng.choice(('Labs', 'Works', 'Systems', 'Group', 'Foundry'))}"
    return rng.choice(("University of {}", "{} Institute", "{} College")).format(_word(rng, 2))


def _phrases(name: str) -> set[str]:
    words = name.lower().split()
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def _entity_names(rng: random.Random, counts: dict[str, int]) -> dict[str, str]:
    """Distinct names; none is a whole-word phrase of another (so mentioning one never mentions another)."""
    types, names, phrases = {}, set(), set()
    for kind, count in counts.items():
        made = 0
        while made < count:
            name = _name(rng, kind)
            own = _phrases(name)
            if name.lower() in phrases or own & names:
                continue
            types[name] = kind
            names.add(name.lower())
            phrases |= own
            made += 1
    return types


def build_graph(num_entities: int, rng: random.Random) -> Graph:
    """A random graph of `num_entities` entities; every entity has every relation its type heads."""
    if num_entities < MIN_ENTITIES:
        raise ValueError(f"num_entities={num_entities}: use at least {MIN_ENTITIES} (five or more of each type)")
    counts = {"country": max(2, num_entities // 10), "city": max(5, num_entities // 5),
              "company": max(3, num_entities * 3 // 20), "university": max(3, num_entities * 3 // 20)}
    counts = {"person": num_entities - sum(counts.values()), **counts}
    types = _entity_names(rng, counts)
    of_type = {kind: [name for name, t in types.items() if t == kind] for kind in ENTITY_TYPES}
    countries, cities = of_type["country"], of_type["city"]
    # Every country gets a city first, so each has a capital among its own cities.
    country_of = {city: countries[i] if i < len(countries) else rng.choice(countries) for i, city in enumerate(cities)}
    facts = []
    for name, kind in types.items():
        for relation_name, relation in RELATIONS.items():
            if relation.head != kind:
                continue
            if relation_name == "located_in":
                tail = country_of[name]
            elif relation_name == "capital":
                tail = rng.choice([city for city in cities if country_of[city] == name])
            else:
                tail = rng.choice(of_type[relation.tail])
            facts.append(Fact(name, relation_name, tail))
    return make_graph(types, facts)


def random_walk(graph: Graph, hops: int, rng: random.Random) -> tuple[Fact, ...] | None:
    """`hops` chained facts from a random start, never revisiting an entity; None at a dead end."""
    current = rng.choice(list(graph.types))
    visited, walk = {current}, []
    for _ in range(hops):
        options = [fact for fact in graph.outgoing[current] if fact.tail not in visited]
        if not options:
            return None
        fact = rng.choice(options)
        walk.append(fact)
        visited.add(fact.tail)
        current = fact.tail
    return tuple(walk)


def compose_question(walk: tuple[Fact, ...], types: dict[str, str]) -> str:
    """The walk as one nested question, innermost hop first: "What is the capital of the country of X?"."""
    phrase = walk[0].head
    for fact in walk:
        phrase = RELATIONS[fact.relation].phrase.format(h=phrase)
    return f"{'Who' if types[walk[-1].tail] == 'person' else 'What'} is {phrase}?"


def passage_tiers(facts: tuple[Fact, ...], walk: tuple[Fact, ...]) -> list[int]:
    """The tier of each fact as a passage for `walk`: GOLD, SAME_ENTITY, SAME_RELATION or UNRELATED."""
    entities = {walk[0].head} | {fact.tail for fact in walk}
    relations = {fact.relation for fact in walk}
    return [
        (GOLD if fact in walk else SAME_ENTITY) if fact.head in entities or fact.tail in entities
        else SAME_RELATION if fact.relation in relations else UNRELATED
        for fact in facts
    ]


def _round_robin(pools: list[list]) -> list:
    order, longest = [], max((len(p) for p in pools), default=0)
    for i in range(longest):
        order.extend(pool[i] for pool in pools if i < len(pool))
    return order


def select_context(graph: Graph, walk: tuple[Fact, ...], rng: random.Random, num_passages: int,
                   max_context_chars: int | None) -> list[dict]:
    """The context as [{"text", "tier"}], shuffled: the gold passages, then distractors round-robin
    over tiers 1-3 while both budgets allow ("\\n"-joined texts at most `max_context_chars` long)."""
    gold = [{"text": fact.sentence(), "tier": GOLD} for fact in walk]
    chars = sum(len(p["text"]) for p in gold) + len(gold) - 1
    if len(gold) > num_passages or (max_context_chars is not None and chars > max_context_chars):
        raise ValueError(
            f"a {len(walk)}-hop question needs {len(gold)} gold passages of {chars} characters, over "
            f"num_passages={num_passages} / max_context_chars={max_context_chars}; raise them or lower hops"
        )
    pools = {SAME_ENTITY: [], SAME_RELATION: [], UNRELATED: []}
    for fact, tier in zip(graph.facts, passage_tiers(graph.facts, walk)):
        if tier != GOLD:
            pools[tier].append((fact, tier))
    room = num_passages - len(gold)  # no tier can contribute more than this
    context = list(gold)
    for fact, tier in _round_robin([rng.sample(pool, min(room, len(pool))) for pool in pools.values()]):
        if len(context) == num_passages:
            break
        text = fact.sentence()
        if max_context_chars is not None and chars + 1 + len(text) > max_context_chars:
            continue  # a shorter passage further on may still fit
        context.append({"text": text, "tier": tier})
        chars += 1 + len(text)
    return rng.sample(context, len(context))


def make_row(graph: Graph, walk: tuple[Fact, ...], rng: random.Random, num_passages: int,
             max_context_chars: int | None = None) -> dict:
    """One row (see the module docstring) for `walk`."""
    passages = select_context(graph, walk, rng, num_passages, max_context_chars)
    context = "\n".join(p["text"] for p in passages)
    answer = walk[-1].tail
    solution = "\n".join([fact.sentence() for fact in walk] + [f"{ANSWER_PREFIX} {answer}"])
    return {
        "question": f"Passages:\n{context}\n\n{compose_question(walk, graph.types)}",
        "answer": answer,
        "path": [fact.tail for fact in walk[:-1]],
        "hops": len(walk),
        "solution": solution,
        "passages": passages,
    }


def generate_multihop(n: int, hops: int = 2, num_entities: int = 1000, num_passages: int = 8,
                      max_context_chars: int | None = None, seed: int = 0) -> list[dict]:
    """`n` rows with distinct questions, each a `hops`-edge walk over one seeded graph."""
    if n < 0:
        raise ValueError(f"n={n} questions: must be >= 0")
    if hops < 2:
        raise ValueError(f"hops={hops}: a multi-hop question needs at least 2 (use 2-4)")
    if num_passages < hops:
        raise ValueError(f"num_passages={num_passages} cannot hold the {hops} gold passages; use >= hops")
    rng = random.Random(seed)
    graph = build_graph(num_entities, rng)
    rows, seen = [], set()
    for _ in range(50 * n + 100):  # dead ends and repeats are common on small graphs; the cap stops an impossible n
        if len(rows) == n:
            break
        walk = random_walk(graph, hops, rng)
        if walk is None or walk in seen:
            continue
        seen.add(walk)
        rows.append(make_row(graph, walk, rng, num_passages, max_context_chars))
    if len(rows) < n:
        raise ValueError(
            f"could only make {len(rows)} distinct {hops}-hop questions from {num_entities} entities, asked "
            f"for {n}; raise num_entities or lower n"
        )
    return rows
