"""The multi-hop generator: seeded, distinct, hops honored, tiered distractors, bounded context, no revisits."""

import random
import re

import pytest

from data import load_task
from data.multihop import (
    ANSWER_INSTRUCTION,
    ANSWER_PREFIX,
    GOLD,
    RELATIONS,
    SAME_ENTITY,
    SAME_RELATION,
    UNRELATED,
    Fact,
    build_graph,
    compose_question,
    generate_multihop,
    make_graph,
    make_row,
    passage_tiers,
    random_walk,
)
from grpo.runtime.config import ConfigError, load_config

SMALL = {"num_entities": 100, "num_passages": 8}
# Each relation's sentence as a regex ("{h} was born in {t}." -> head and tail groups): a passage's
# fact is read back from its text alone, independently of how the generator labelled it.
PATTERNS = {
    name: re.compile(re.escape(rel.sentence).replace(r"\{h\}", "(?P<h>.+?)").replace(r"\{t\}", "(?P<t>.+?)"))
    for name, rel in RELATIONS.items()
}


def read_fact(text):
    facts = [Fact(m["h"], name, m["t"]) for name, pattern in PATTERNS.items() if (m := pattern.fullmatch(text))]
    assert len(facts) == 1, text
    return facts[0]


def gold_lines(row):
    return row["solution"].splitlines()[:-1]


def test_generation_is_deterministic_for_a_seed():
    rows = generate_multihop(40, hops=3, seed=0, **SMALL)
    assert rows == generate_multihop(40, hops=3, seed=0, **SMALL)
    assert rows != generate_multihop(40, hops=3, seed=1, **SMALL)


def test_questions_are_distinct():
    rows = generate_multihop(300, hops=2, seed=0, **SMALL)  # 300 of the 460 2-hop walks this graph has
    asked = [row["question"].rsplit("\n", 1)[1] for row in rows]  # the question line, without passages
    assert len(set(asked)) == len(rows) == 300


@pytest.mark.parametrize("hops", [2, 3, 4], ids=["2-hops", "3-hops", "4-hops"])
def test_hops_gold_passages_and_the_solution_chain(hops):
    for row in generate_multihop(30, hops=hops, seed=0, **SMALL):
        assert row["hops"] == hops and len(row["path"]) == hops - 1
        lines = row["solution"].splitlines()
        assert lines[-1] == f"{ANSWER_PREFIX} {row['answer']}" and len(lines) == hops + 1
        gold = [p["text"] for p in row["passages"] if p["tier"] == GOLD]
        assert sorted(gold) == sorted(gold_lines(row))  # one gold passage per hop, each in the context
        assert all(line in row["question"] for line in gold)
        # the chain links up: hop i names path[i - 1] and path[i], the last hop names the answer
        for i, line in enumerate(gold_lines(row)):
            assert i == 0 or row["path"][i - 1] in line
            assert (row["path"] + [row["answer"]])[i] in line
        assert row["question"].endswith("?") and row["question"].count(" of ") >= hops  # one phrase per hop


def test_no_entity_is_visited_twice():
    graph = build_graph(25, random.Random(0))  # the smallest graph: revisits would be common
    rng = random.Random(1)
    walks = [w for w in (random_walk(graph, 4, rng) for _ in range(2000)) if w is not None]
    assert len(walks) > 100
    for walk in walks:
        entities = [walk[0].head] + [fact.tail for fact in walk]
        assert len(set(entities)) == len(entities) == 5
        assert all(a.tail == b.head for a, b in zip(walk, walk[1:]))
    for row in generate_multihop(100, hops=4, seed=0, num_entities=25, num_passages=6):
        assert len(set(row["path"] + [row["answer"]])) == 4


def test_distractor_tiers_are_present_and_labelled_by_what_they_state():
    for row in generate_multihop(60, hops=2, seed=0, **SMALL):
        tiers = [p["tier"] for p in row["passages"]]
        assert len(tiers) == 8 and tiers.count(GOLD) == 2
        assert {SAME_ENTITY, SAME_RELATION, UNRELATED} <= set(tiers)  # round-robin: 6 slots, 2 per tier
        walk = [read_fact(line) for line in gold_lines(row)]
        entities = {walk[0].head} | {fact.tail for fact in walk}
        assert entities == {walk[0].head, *row["path"], row["answer"]}
        relations = {fact.relation for fact in walk}
        for passage in row["passages"]:
            fact = read_fact(passage["text"])
            touches = fact.head in entities or fact.tail in entities
            expected = (GOLD if fact in walk else SAME_ENTITY) if touches else (
                SAME_RELATION if fact.relation in relations else UNRELATED)
            assert passage["tier"] == expected, passage


def test_passages_are_shuffled_not_gold_first():
    rows = generate_multihop(50, hops=2, seed=0, **SMALL)
    assert len({tuple(p["tier"] for p in row["passages"]) for row in rows}) > 10


@pytest.mark.parametrize("num_passages", [2, 5, 12], ids=["gold-only", "five", "twelve"])
def test_context_holds_num_passages(num_passages):
    for row in generate_multihop(20, hops=2, seed=0, num_entities=100, num_passages=num_passages):
        assert len(row["passages"]) == num_passages


def test_context_character_bound_holds_and_the_context_is_in_the_question():
    for row in generate_multihop(50, hops=3, seed=0, num_entities=100, num_passages=30, max_context_chars=300):
        context = "\n".join(p["text"] for p in row["passages"])
        assert len(context) <= 300 and len(row["passages"]) > 3  # distractors fill what the gold leave
        assert row["question"].startswith(f"Passages:\n{context}\n\n")


# A hand-built graph: Ann Vale was born in Rivoford, which is in Kestia, whose capital is Dunmere.
TYPES = {"Ann Vale": "person", "Bo Stone": "person", "Rivoford": "city", "Dunmere": "city",
         "Kestia": "country", "Ozel Labs": "company"}
FACTS = [
    Fact("Ann Vale", "born_in", "Rivoford"),
    Fact("Rivoford", "located_in", "Kestia"),
    Fact("Kestia", "capital", "Dunmere"),
    Fact("Dunmere", "located_in", "Kestia"),
    Fact("Ann Vale", "works_for", "Ozel Labs"),
    Fact("Bo Stone", "born_in", "Dunmere"),
    Fact("Ozel Labs", "founded_by", "Bo Stone"),
    Fact("Ozel Labs", "headquartered_in", "Dunmere"),
]


def test_hand_built_graph_row():
    graph = make_graph(TYPES, FACTS)
    walk = (FACTS[0], FACTS[1])  # Ann Vale -born_in-> Rivoford -located_in-> Kestia
    # Tiers by hand: gold = the walk; touching Ann Vale, Rivoford or Kestia = Kestia's capital, Dunmere
    # in Kestia, Ann's employer; born_in/located_in about others = Bo Stone's birthplace; the rest unrelated.
    assert passage_tiers(graph.facts, walk) == [GOLD, GOLD, SAME_ENTITY, SAME_ENTITY, SAME_ENTITY,
                                                SAME_RELATION, UNRELATED, UNRELATED]
    row = make_row(graph, walk, random.Random(0), num_passages=8)
    assert row["question"].endswith("\n\nWhat is the country of the birthplace of Ann Vale?")
    assert (row["answer"], row["path"], row["hops"]) == ("Kestia", ["Rivoford"], 2)
    assert row["solution"] == "Ann Vale was born in Rivoford.\nRivoford is located in Kestia.\nFinal answer: Kestia"
    by_text = {p["text"]: p["tier"] for p in row["passages"]}
    assert by_text == {fact.sentence(): tier for fact, tier in zip(FACTS, passage_tiers(graph.facts, walk))}
    assert by_text["Bo Stone was born in Dunmere."] == SAME_RELATION
    gold_only = make_row(graph, walk, random.Random(0), num_passages=2)["passages"]
    assert sorted(p["text"] for p in gold_only) == ["Ann Vale was born in Rivoford.", "Rivoford is located in Kestia."]
    assert {p["tier"] for p in gold_only} == {GOLD}
    # a person at the end of the walk is asked with "Who"
    assert compose_question((FACTS[4], FACTS[6]), TYPES) == "Who is the founder of the employer of Ann Vale?"


def test_hand_built_graph_walks_never_return():
    graph = make_graph(TYPES, FACTS)
    rng = random.Random(0)
    walks = {random_walk(graph, 2, rng) for _ in range(500)}
    # From Kestia: capital -> Dunmere -> located_in -> Kestia would revisit, so that 2-hop walk is a dead end.
    assert (FACTS[2], FACTS[3]) not in walks
    assert (FACTS[0], FACTS[1]) in walks


@pytest.mark.parametrize(
    "types, facts, message",
    [
        pytest.param({"A": "planet"}, [], "type 'planet'", id="unknown-type"),
        pytest.param({"A": "person"}, [Fact("A", "likes", "A")], "unknown relation 'likes'", id="unknown-relation"),
        pytest.param({"A": "person", "B": "person"}, [Fact("A", "born_in", "B")], "links a person to a city",
                     id="wrong-tail-type"),
        pytest.param({"A": "person", "C": "city", "D": "city"},
                     [Fact("A", "born_in", "C"), Fact("A", "born_in", "D")], "relations are functional",
                     id="two-birthplaces"),
    ],
)
def test_make_graph_rejects_bad_graphs(types, facts, message):
    with pytest.raises(ValueError, match=message):
        make_graph(types, facts)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"hops": 1}, "hops=1", id="one-hop"),
        pytest.param({"num_passages": 2, "hops": 3}, "num_passages=2", id="fewer-passages-than-hops"),
        pytest.param({"num_entities": 10}, "num_entities=10", id="tiny-graph"),
        pytest.param({"max_context_chars": 20}, "max_context_chars=20", id="bound-below-the-gold"),
        pytest.param({"n": 5000, "num_entities": 25}, "could only make", id="more-questions-than-walks"),
    ],
)
def test_generator_rejects_impossible_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_multihop(**{"n": 10, "num_entities": 100, **kwargs})


def test_load_task_multihop_splits_and_prompts_with_its_own_instruction():
    splits = load_task("multihop", n_shot=0, style="plain", num_multihop=50, multihop_entities=100,
                       multihop_passages=4, multihop_hops=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 45, "validation": 5}
    row = splits["train"][0]
    assert row["prompt"] == f"{ANSWER_INSTRUCTION}\n\nQuestion: {row['question']}\nAnswer:"
    assert "####" not in row["prompt"] and row["hops"] == 3 and len(row["passages"]) == 4


def test_load_task_multihop_refuses_few_shot_exemplars():
    with pytest.raises(ValueError, match=r"multihop' takes n_shot=0 only, got n_shot=2.*set n_shot=0"):
        load_task("multihop", n_shot=2, style="plain", num_multihop=5, multihop_entities=100)


@pytest.mark.parametrize(
    "override, message",
    [
        pytest.param("data.n_shot=2", "data.n_shot=2: data.task=multihop takes 0", id="few-shot"),
        pytest.param("data.multihop_hops=1", "data.multihop_hops=1: use >= 2", id="one-hop"),
        pytest.param("data.multihop_passages=2", "data.multihop_passages=2: use >= data.multihop_hops=3",
                     id="passages-below-hops"),
        pytest.param("data.multihop_entities=10", "data.multihop_entities=10", id="tiny-graph"),
        pytest.param("data.num_multihop=0", "data.num_multihop=0", id="no-questions"),
        pytest.param("data.multihop_context_chars=0", "data.multihop_context_chars=0", id="zero-char-cap"),
    ],
)
def test_config_rejects_bad_multihop_keys(override, message):
    base = ["data.task=multihop", "data.n_shot=0", "data.multihop_hops=3", "data.multihop_passages=6"]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [*base, override])
