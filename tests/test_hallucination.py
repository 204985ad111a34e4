import json

import pytest
import torch
from conftest import fake_trace

from lvlm_kit.data import read_amber
from lvlm_kit.hallucination import (
    analyse_response,
    label_tokens,
    noun_lemmas,
    overtake_layer,
    score_discriminative,
    score_generative,
)

RELATION = {
    "dog": ["puppy"],
    "cat": ["kitten"],
    "car": ["vehicle"],
    "tree": [],
    "person": ["man", "woman"],
    "grass": [],
    "background": [],
}
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "car"]},
    {"id": 2, "type": "generative", "truth": ["person", "tree"], "hallu": ["dog"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "yes"},
    {"id": 4, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 5, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 6, "type": "discriminative-relation", "truth": "yes"},
    {"id": 7, "type": "generative", "truth": ["car", "tree"], "hallu": ["person"]},
    {"id": 8, "type": "discriminative-attribute-number", "truth": "no"},
]
GENERATIVE = [
    {
        "id": 1,
        "response": "A puppy runs on the grass next to a cat and two cars. "
        "The background is green.",
    },
    {"id": 2, "response": "A man stands near a tree. A woman holds a kitten."},
    {"id": 7, "response": "A red car."},
]
DISCRIMINATIVE = [
    {"id": 3, "response": "Yes"},
    {"id": 4, "response": "No."},
    {"id": 5, "response": "Yes, there is."},
    {"id": 6, "response": "no"},
    {"id": 8, "response": "I cannot tell"},
]


def write_amber(root, annotations=ANNOTATIONS, relation=RELATION):
    (root / "data" / "query").mkdir(parents=True)
    (root / "image").mkdir()
    gen = [
        {"id": a["id"], "image": f"AMBER_{a['id']}.jpg", "query": "Describe this image."}
        for a in annotations
        if a["type"] == "generative"
    ]
    dis = [
        {"id": a["id"], "image": f"AMBER_{a['id']}.jpg", "query": "Is there a dog?"}
        for a in annotations
        if a["type"] != "generative"
    ]
    files = {
        "query_generative.json": gen,
        "query_discriminative.json": dis,
        "query_all.json": gen + dis,
    }
    for name, value in files.items():
        (root / "data" / "query" / name).write_text(json.dumps(value))
    (root / "data" / "annotations.json").write_text(json.dumps(annotations))
    (root / "data" / "relation.json").write_text(json.dumps(relation))
    (root / "data" / "safe_words.txt").write_text("background\n")
    return root


@pytest.fixture
def amber(tmp_path):
    return read_amber(write_amber(tmp_path))


def test_reader(amber, tmp_path):
    assert [q["id"] for q in amber.queries] == [1, 2, 7]
    assert amber.annotations[7]["truth"] == ["car", "tree"]
    assert amber.safe_words == {"background"}
    assert "kitten" in amber.vocabulary and "dog" in amber.vocabulary
    assert amber.image_path(amber.queries[0]) == tmp_path / "image" / "AMBER_1.jpg"
    assert len(read_amber(tmp_path, "discriminative").queries) == 5


def test_generative_metrics_by_hand(amber):
    # Kept nouns: r1 puppy grass cat car background | r2 man tree woman kitten | r7 car.
    # Hallucinated: cat, car (r1), kitten (r2) = 3; counted 10 (safe "background" included).
    s = score_generative(GENERATIVE, amber)
    assert (s.n_hallucinated, s.n_nouns, s.n_responses) == (3, 10, 3)
    assert s.chair == pytest.approx(3 / 10)
    assert s.cover == pytest.approx(5 / 6)  # dog grass | person tree | car (tree missed)
    assert s.hal == pytest.approx(2 / 3)
    assert s.cog == pytest.approx(2 / 4)  # cat, car recognised of cat car dog person
    dropped = score_generative(GENERATIVE, amber, safe_words_in_denominator=False)
    assert dropped.chair == pytest.approx(3 / 9)


def test_one_chair_rule_everywhere(amber):
    import math

    import numpy as np

    from lvlm_kit.hallucination import chair, cover, pooled_share
    from lvlm_kit.runs import Counts

    assert chair(3, 10) == pytest.approx(0.3) and cover(5, 6) == pytest.approx(5 / 6)
    assert math.isnan(chair(0, 0)) and math.isnan(pooled_share(0, 0))  # a share of nothing
    assert np.allclose(chair(np.array([1, 0]), np.array([4, 0])), [0.25, np.nan], equal_nan=True)
    # Counts pools exactly as the AMBER scorer does, over any subset of the images
    queries = [q for q in amber.queries if q["id"] in (1, 2, 7)]
    texts = [r["response"] for r in GENERATIVE]
    counts, score = Counts.of(amber, queries, texts), score_generative(GENERATIVE, amber)
    assert (counts.chair, counts.cover, counts.hal) == pytest.approx(
        (score.chair, score.cover, score.hal)
    )
    assert counts.chair_of(np.array([0, 0])) == pytest.approx(4 / 10)  # r1 twice: 2 of 5 each
    # descriptions that name no object have no CHAIR, in the scorer and in Counts alike
    mute = [{"id": 1, "response": "It is nice."}]
    assert math.isnan(score_generative(mute, amber).chair)
    assert math.isnan(Counts.of(amber, queries[:1], ["It is nice."]).chair)


def test_response_analysis(amber):
    a = analyse_response(
        GENERATIVE[0]["response"], ["dog", "grass"], ["cat", "car"], RELATION, {"background"}
    )
    assert a.nouns == ["puppy", "grass", "cat", "car", "background"]
    assert a.hallucinated == ["cat", "car"]
    assert a.covered == {"dog", "grass"} and a.recognised == {"cat", "car"}


def test_discriminative_metrics_by_hand(amber):
    # truth/answer: yes/yes, no/no (TP), no/yes (FN), yes/no (FP), no/none (FN).
    d = score_discriminative(DISCRIMINATIVE, read_amber(amber.root, "discriminative"))
    assert d["accuracy"] == pytest.approx(2 / 5)
    assert d["precision"] == pytest.approx(1 / 2)
    assert d["recall"] == pytest.approx(1 / 3)
    assert d["f1"] == pytest.approx(0.4)


def test_noun_lemmas():
    vocab = {"leaf", "glasses", "boat", "fish"}
    got = noun_lemmas("Two boats, some leaves and glasses; the fish swims.", vocab)
    assert [w for w, _ in got if w in vocab] == ["boat", "leaf", "glasses", "fish"]
    assert ("boat", 4) in got  # offsets are character starts; "two" has a noun reading too


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="query_generative.json"):
        read_amber(tmp_path)
    root = write_amber(tmp_path / "a")
    (root / "data" / "relation.json").write_text('{"dog": [}')
    with pytest.raises(ValueError, match="relation.json' is not valid JSON \\(line 1"):
        read_amber(root)
    root = write_amber(tmp_path / "b", annotations=ANNOTATIONS[:1])
    gen = json.loads((root / "data/query/query_generative.json").read_text())
    gen.append({"id": 99, "image": "AMBER_99.jpg", "query": "Describe this image."})
    (root / "data/query/query_generative.json").write_text(json.dumps(gen))
    with pytest.raises(ValueError, match=r"1 query ids have no entry.*\[99\]"):
        read_amber(root)
    with pytest.raises(ValueError, match="no generative annotation"):
        score_generative([{"id": 3, "response": "x"}], read_amber(write_amber(tmp_path / "c")))


def test_label_tokens():
    tr = fake_trace(["a", "red", "boat", "and", "a", "fi", "##sh", "."], torch.zeros(8, 3))
    labels = label_tokens(tr, truth=["boat"], hallu=["fish"])
    assert labels.labels == [
        "other",
        "other",
        "correct",
        "other",
        "other",
        "hallucinated",
        "other",
        "other",
    ]
    assert labels.objects[2] == "boat" and labels.objects[5] == "fish"
    assert labels.indices("hallucinated") == [5]


def test_overtake_layer():
    # Step 0 emitted id 0 (hallucinated); id 7 (correct) tracked. Layers 0..4.
    emitted = torch.tensor([[0.0, 0.1, 0.2, 0.6, 0.7]])
    correct = torch.tensor([[[0.0], [0.3], [0.4], [0.2], [0.1]]])
    tr = fake_trace(["fish"], emitted, torch.tensor([7]), correct)
    assert overtake_layer(tr, 0, winner=0, loser=7) == 3
    assert overtake_layer(tr, 0, winner=7, loser=0) is None
    with pytest.raises(ValueError, match="neither emitted at step 0 nor tracked"):
        overtake_layer(tr, 0, winner=0, loser=5)
