"""Task datasets: IOI, facts, colored objects (token positions, pairs, errors).

Unit tests use a word-level tokenizer that behaves like GPT-2 BPE on words
(``" Mary"`` is one token) and prepends BOS, so positions are checked with BOS
counted; bundled tests check the real SmolLM2 tokenizer (no BOS).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch

from interp.datasets import (TaskDataset, colored_objects_dataset, facts_dataset, ioi_dataset, ioi_names,
                             known_facts, load_facts)
from interp.datasets._align import task_data_json
from interp.errors import ConfigError, DataError
from interp.models import tokenize

_PIECE = r" ?[A-Za-z0-9]+| ?[^A-Za-z0-9\s]+|\n"


def _word_model(texts: list[str], bos: bool = True, drop: tuple[str, ...] = ()):
    """A fake model: word-level tokenizer over every piece of ``texts`` (minus ``drop``), BOS prepended."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = sorted({p for t in texts for p in re.findall(_PIECE, t)} - set(drop))
    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2, **{p: i + 3 for i, p in enumerate(pieces)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE), behavior="isolated")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    return SimpleNamespace(tokenizer=hf, cfg=SimpleNamespace(default_prepend_bos=bos, n_ctx=512, device=None))


def _ioi_vocab_texts() -> list[str]:
    d = task_data_json("ioi.json")
    return d["templates"] + [" " + " ".join(d["names"] + d["places"] + d["objects"])]


def _decode_at(model, ds, i, pos, which="clean"):
    tb = tokenize(model, [getattr(ds, which)[i]])
    return model.tokenizer.decode([int(tb.tokens[0, pos])])


@pytest.mark.parametrize("bos", [True, False])
def test_ioi_positions_point_at_names_toy_tokenizer(bos):
    model = _word_model(_ioi_vocab_texts(), bos=bos)
    ds = ioi_dataset(model, n=30, seed=3)
    assert len(ds) == 30
    assert {m["order"] for m in ds.meta} == {"ABBA", "BABA"}
    tb = ds.tokenize(model)
    for i, m in enumerate(ds.meta):
        assert _decode_at(model, ds, i, m["io_pos"]) == ds.answers[i] == " " + m["io"]
        assert _decode_at(model, ds, i, m["s1_pos"]) == ds.counterfactuals[i] == " " + m["s"]
        assert _decode_at(model, ds, i, m["s2_pos"]) == " " + m["s"]
        assert m["end_pos"] == int(tb.clean.lengths[i]) - 1
        assert (m["io_pos"] < m["s1_pos"]) == (m["order"] == "ABBA") and m["s1_pos"] < m["s2_pos"] < m["end_pos"]
        # ABC: three names distinct from each other and from IO / S, same template otherwise
        abc = m["corrupt_names"]
        assert len(set(abc)) == 3 and not set(abc) & {m["io"], m["s"]}
        assert [_decode_at(model, ds, i, m[k], "corrupted") for k in ("io_pos", "s1_pos", "s2_pos")] != \
            [" " + m["io"], " " + m["s"], " " + m["s"]]
    assert torch.equal(tb.clean.lengths, tb.corrupted.lengths)
    if bos:
        assert min(m["io_pos"] for m in ds.meta) >= 1 and int(tb.clean.tokens[0, 0]) == model.tokenizer.bos_token_id


def test_ioi_seeded_and_order_option():
    model = _word_model(_ioi_vocab_texts())
    assert ioi_dataset(model, n=6, seed=1).clean == ioi_dataset(model, n=6, seed=1).clean
    assert ioi_dataset(model, n=6, seed=1).clean != ioi_dataset(model, n=6, seed=2).clean
    assert {m["order"] for m in ioi_dataset(model, n=6, order="BABA").meta} == {"BABA"}
    with pytest.raises(ConfigError, match="order"):
        ioi_dataset(model, n=4, order="ABAB")


def test_ioi_names_filtered_per_tokenizer():
    model = _word_model(_ioi_vocab_texts() + [" Anne-Marie"])
    given = ["Mary", "Anne-Marie", "John", "Mary", "Alice", "Bob", "Emma", "Paul"]
    assert ioi_names(model, given) == ["Mary", "John", "Alice", "Bob", "Emma", "Paul"]  # multi-token, duplicate gone
    ds = ioi_dataset(model, n=20, names=given)
    assert {m["io"] for m in ds.meta} | {m["s"] for m in ds.meta} <= {"Mary", "John", "Alice", "Bob", "Emma", "Paul"}
    with pytest.raises(DataError, match=r"empty after filtering.*Anne-Marie"):
        ioi_names(model, ["Mary", "Anne-Marie", "John"])


def test_ioi_errors_on_byte_tokenizer(toy_llama):
    # a byte-level tokenizer has no single-token " Name": clear error, not a silent empty set
    with pytest.raises(DataError, match="empty after filtering"):
        ioi_dataset(toy_llama, n=4)


def test_ioi_error_names_prompt_for_multi_token_name_in_context():
    model = _word_model(_ioi_vocab_texts())
    with pytest.raises(DataError, match="lacks the field"):
        ioi_dataset(model, n=2, templates=["When {N1} went to the {place}, they gave a {object} to"])


def test_facts_subject_spans_and_multi_token_answers(tmp_path):
    facts = [{"prompt": "The capital of France is", "subject": "France", "answer": " Paris", "relation": "capital"},
             {"prompt": "Big Ben is located in the city of", "subject": "Big Ben", "answer": " London",
              "relation": "city"},
             {"prompt": "The capital of Spain is", "subject": "Spain", "answer": " Madrid", "relation": "capital"},
             {"prompt": "The capital of Peru is", "subject": "Peru", "answer": " Lima Lima", "relation": "capital"}]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    model = _word_model([f["prompt"] + f["answer"] for f in facts])
    with pytest.warns(UserWarning, match="Lima"):
        ds = facts_dataset(model, path)
    assert len(ds) == 3 and ds.answers == (" Paris", " London", " Madrid")
    for i, m in enumerate(ds.meta):
        tb = tokenize(model, [ds.clean[i]])
        span = "".join(model.tokenizer.convert_ids_to_tokens(tb.tokens[0, m["subject_start"]:m["subject_end"]].tolist()))
        assert span.strip() == m["subject"]
    assert ds.meta[1]["subject_start"] == 1 and ds.meta[1]["subject_end"] == 3  # BOS, "Big", " Ben"
    with pytest.raises(DataError, match="Lima"):
        facts_dataset(model, path, on_multi_token="error")


def test_facts_pairs_same_length_other_answer(tmp_path):
    facts = [{"prompt": f"The capital of {c} is", "subject": c, "answer": " " + a, "relation": "capital"}
             for c, a in [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("South Korea", "Seoul")]]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    model = _word_model([f["prompt"] + f["answer"] for f in facts])
    with pytest.warns(UserWarning, match="South Korea"):
        ds = facts_dataset(model, path, pairs=True)
    assert len(ds) == 3
    tb = ds.tokenize(model)
    assert torch.equal(tb.clean.lengths, tb.corrupted.lengths)
    for i in range(3):
        assert ds.answers[i] != ds.counterfactuals[i] and ds.clean[i] != ds.corrupted[i]


def test_load_facts_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "The capital of France is", "subject": "Spain", "answer": " Paris"}) + "\n")
    with pytest.raises(DataError, match="does not occur"):
        load_facts(bad)
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match=":1:"):
        load_facts(bad)
    bad.write_text("\n")
    with pytest.raises(DataError, match="no facts"):
        load_facts(bad)
    assert len(load_facts()) >= 100  # the bundled set


def test_known_facts_empty_after_filtering(toy_llama):
    ds = TaskDataset("facts", ("ab",), answers=("c",), meta=({},))
    # a random toy model: demand probability 1.0 -> nothing survives -> clear error naming the prompt
    with pytest.raises(DataError, match=r"empty after filtering.*'ab'"):
        known_facts(toy_llama, ds, min_prob=1.0)
    kept = known_facts(toy_llama, ds, min_prob=0.0)
    assert len(kept) == 1 and 0.0 < kept.meta[0]["p_answer"] < 1.0


def test_colored_objects_toy_tokenizer():
    d = task_data_json("colored_objects.json")
    words = " " + " ".join(d["colors"] + [c.capitalize() for c in d["colors"]] + d["objects"] + ["a", "an"])
    model = _word_model([d["template"].replace("{", " ").replace("}", " "), words] + d["surfaces"]
                        + ["Q: A: What color is the ? , . \n"])
    ds = colored_objects_dataset(model, n=12, seed=0)
    tb = ds.tokenize(model)
    assert torch.equal(tb.clean.lengths, tb.corrupted.lengths)
    for i, m in enumerate(ds.meta):
        assert ds.answers[i] == " " + m["colors"][m["objects"].index(m["asked"])].capitalize()
        assert ds.counterfactuals[i] == " " + m["colors"][m["objects"].index(m["corrupt_asked"])].capitalize()
        assert m["asked"] != m["corrupt_asked"]
        assert _decode_at(model, ds, i, m["asked_pos"]) == " " + m["asked"]
        assert _decode_at(model, ds, i, m["asked_pos"], "corrupted") == " " + m["corrupt_asked"]
        assert ds.clean[i].count("\nA: ") == 1 and ds.clean[i].endswith("?\nA:")
    three = colored_objects_dataset(model, n=2, seed=0, shots=3)
    assert three.clean[0].count("\nA: ") == 3 and len(three) == 2


# ----------------------------------------------------------------------------- bundled model

@pytest.mark.bundled
def test_ioi_smollm2_positions_and_behaviour(smollm2):
    names = ioi_names(smollm2)
    assert len(names) >= 50
    for n in names:
        assert len(smollm2.tokenizer(" " + n, add_special_tokens=False).input_ids) == 1
    ds = ioi_dataset(smollm2, n=20, seed=0)
    tb = ds.tokenize(smollm2)
    assert torch.equal(tb.clean.lengths, tb.corrupted.lengths)
    dec = smollm2.tokenizer.decode
    for i, m in enumerate(ds.meta):
        row = tb.clean.tokens[i]
        assert dec([int(row[m["io_pos"]])]) == " " + m["io"]
        assert dec([int(row[m["s1_pos"]])]) == dec([int(row[m["s2_pos"]])]) == " " + m["s"]
        assert m["end_pos"] == int(tb.clean.last[i]) and dec([int(row[m["end_pos"]])]) == " to"
    with torch.inference_mode():
        logits = smollm2(tb.clean.tokens)
    last = logits[torch.arange(len(ds)), tb.clean.last]
    ld = last.gather(1, tb.answer_ids[:, None]) - last.gather(1, tb.counter_ids[:, None])
    assert (ld > 0).float().mean() >= 0.9  # the check: LD positive for >= 90% of prompts


@pytest.mark.bundled
def test_facts_smollm2_known(smollm2):
    with pytest.warns(UserWarning, match="not single tokens"):
        ds = facts_dataset(smollm2)
    assert len(ds) >= 100
    for i in (0, len(ds) // 2, len(ds) - 1):
        m = ds.meta[i]
        row = tokenize(smollm2, [ds.clean[i]]).tokens[0]
        assert smollm2.tokenizer.decode(row[m["subject_start"]:m["subject_end"]].tolist()).strip() == m["subject"]
    known = known_facts(smollm2, ds.subset(range(20)))  # capitals: SmolLM2 knows most of them
    assert 5 <= len(known) <= 20
    tb = tokenize(smollm2, list(known.clean))
    with torch.inference_mode():
        top = smollm2(tb.tokens)[torch.arange(len(known)), tb.last].argmax(-1)
    assert smollm2.tokenizer.batch_decode(top[:, None]) == list(known.answers)
