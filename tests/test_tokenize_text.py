"""Prompt text as users paste it (issue 15 item 6): special-token text stays text, a BOM is dropped.

Oracle: the tokenizer's own id of the special token. By default that id must not occur
in the tokens of a prompt that merely *writes* the token; with ``allow_special=True`` it
must, exactly where it was written.
"""

from __future__ import annotations

import json

import pytest

from interp.datasets import TaskDataset, load_prompts
from interp.datasets._align import char_span_to_tokens
from interp.models import tokenize


def _ids(batch, i=0):
    return batch.tokens[i, : int(batch.lengths[i])].tolist()


def test_special_token_text_is_plain_text_by_default_toy(toy_llama):
    tok = toy_llama.tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    text = "user said <bos> then <eos>"
    plain = _ids(tokenize(toy_llama, [text], prepend_bos=False))
    assert bos not in plain and eos not in plain
    assert tok.decode(plain) == text                     # round trip: nothing was swallowed
    special = _ids(tokenize(toy_llama, [text], prepend_bos=False, allow_special=True))
    assert special.count(bos) == 1 and special.count(eos) == 1 and special[-1] == eos


def test_answers_and_spans_follow_the_same_rule_toy(toy_llama):
    """Dataset checks tokenize like tokenize(): an answer written as '<eos>' is 5 plain tokens, not one."""
    from interp.errors import DataError

    ds = TaskDataset("t", ("a b",), ("a c",), answers=("<eos>",), counterfactuals=("x",))
    with pytest.raises(DataError, match="answers are not single tokens"):
        ds.tokenize(toy_llama)
    prompt = "<bos>Paris is"
    a, b = char_span_to_tokens(toy_llama, prompt, prompt.index("Paris"), prompt.index("Paris") + 5,
                               prepend_bos=False)
    row = _ids(tokenize(toy_llama, [prompt], prepend_bos=False))
    assert toy_llama.tokenizer.decode(row[a:b]) == "Paris"


def test_bom_is_dropped_from_prompt_files(tmp_path, toy_llama):
    txt = tmp_path / "p.txt"
    txt.write_bytes("\ufeffHello world\nSecond line\n".encode("utf-8"))
    assert load_prompts(txt) == ["Hello world", "Second line"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"prompt": "Hello world"}) + "\n").encode("utf-8"))
    assert load_prompts(jsonl) == ["Hello world"]
    task = tmp_path / "t.jsonl"
    task.write_bytes(("\ufeff" + json.dumps({"clean": "Hi", "corrupted": "Ho"}) + "\n").encode("utf-8"))
    assert TaskDataset.from_jsonl(task).clean == ("Hi",)
    assert _ids(tokenize(toy_llama, load_prompts(txt)[:1])) == _ids(tokenize(toy_llama, ["Hello world"]))


def test_bom_inside_the_text_is_kept(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes("a\ufeffb\n".encode("utf-8"))
    assert load_prompts(p) == ["a\ufeffb"]


@pytest.mark.bundled
def test_chat_markup_in_a_prompt_stays_text_smollm2(smollm2):
    tok = smollm2.tokenizer
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>"
    plain = _ids(tokenize(smollm2, [text]))
    assert im_start not in plain and im_end not in plain
    assert tok.decode(plain) == text
    special = _ids(tokenize(smollm2, [text], allow_special=True))
    assert special[0] == im_start and special[-1] == im_end
    assert tok.decode(special) == text and len(special) < len(plain)


@pytest.mark.bundled
def test_bom_file_tokenizes_like_clean_text_smollm2(tmp_path, smollm2):
    p = tmp_path / "chat.txt"
    p.write_bytes("\ufeffThe Eiffel Tower is in\n".encode("utf-8"))
    assert _ids(tokenize(smollm2, load_prompts(p))) == _ids(tokenize(smollm2, ["The Eiffel Tower is in"]))
