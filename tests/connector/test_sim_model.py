"""The simulated model's pure functions: tokens, generation, block hashes, KV bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfuyao_pd.sim import model
from openfuyao_pd.sim.metrics import Registry

token_lists = st.lists(st.integers(min_value=3, max_value=model.VOCAB_SIZE - 1), min_size=1, max_size=80)


def test_one_token_per_word_and_stable_ids():
    ids = model.tokenize("alpha  beta\ngamma alpha")
    assert len(ids) == 4 and ids[0] == ids[3] and len(set(ids)) == 3
    assert all(3 <= t < model.VOCAB_SIZE for t in ids)
    assert model.token_text(model.EOS_TOKEN_ID) == ""
    assert model.tokenize(model.render_chat([{"role": "user", "content": "hi"}]))[-1] == \
        model.tokenize("<|assistant|>")[0]


@given(token_lists, st.integers(0, 2**31), st.integers(0, 1000))
def test_generation_is_pure(ids, seed, position):
    digest = model.prompt_digest(ids)
    assert model.generate_token(digest, seed, position) == model.generate_token(model.prompt_digest(list(ids)),
                                                                                seed, position)


@settings(max_examples=50)
@given(token_lists, token_lists)
def test_kv_bytes_share_exactly_the_common_full_blocks(a, b):
    block, bpt = 4, 8
    ka, kb = model.kv_content(a, bpt, "m", block), model.kv_content(b, bpt, "m", block)
    assert len(ka) == len(a) * bpt
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    shared_blocks = common // block
    span = shared_blocks * block * bpt
    assert ka[:span] == kb[:span]
    if a != b and len(a) > shared_blocks * block and len(b) > shared_blocks * block:
        assert ka[span:span + bpt] != kb[span:span + bpt]  # the first differing block differs
    if a != b:
        assert ka != kb
    assert model.kv_content(a, bpt, "other-model", block) != ka


def test_block_hashes_cover_full_blocks_only():
    ids = list(range(3, 3 + 40))
    hashes = model.block_hashes(ids, 16, "m")
    assert len(hashes) == 2
    assert model.block_hashes(ids[:32] + [9] * 8, 16, "m") == hashes
    assert model.block_hashes([9, *ids[1:]], 16, "m")[1] != hashes[1]  # chained: block 1 depends on block 0


def test_kv_size_from_shape():
    assert model.kv_bytes_per_token(2, 4, 64, 2) == model.TINY_LLAMA_KV_BYTES_PER_TOKEN == 2048
    assert model.kv_bytes_per_token_from_hf_config({"num_hidden_layers": 2}) is None
    assert model.kv_bytes_per_token_from_hf_config(
        {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512, "torch_dtype": "float32"}) == \
        4 * 2 * 8 * 64 * 4


def test_metrics_text_format():
    """prometheus_client's text format (vLLM's exporter): every series has the engine's labels,
    unlabelled counters and preset label sets exist from the start, no `_created` series."""
    reg = Registry({"model_name": "m", "engine": "0"})
    reg.counter("a_total", "doc", labels=["reason"])
    reg.counter("b_total", "doc b")
    reg.counter("c_total", "doc c", labels=["transport"], preset=[{"transport": "http"}])
    reg.counter("d_total", "doc d", lambda: 7)
    reg.gauge("g", "doc g", lambda: 0.25)
    reg.histogram("h_seconds", "doc", (0.1, 1.0))
    assert 'h_seconds_count' not in reg.render() and 'a_total{' not in reg.render()
    reg.inc("a_total", 2, {"reason": "x"})
    reg.observe("h_seconds", 0.5)
    reg.observe("h_seconds", 5.0)
    text = reg.render()
    assert '# TYPE a_total counter\na_total{engine="0",model_name="m",reason="x"} 2.0\n' in text
    assert '# HELP b_total doc b\n# TYPE b_total counter\nb_total{engine="0",model_name="m"} 0.0\n' in text
    assert 'c_total{engine="0",model_name="m",transport="http"} 0.0\n' in text
    assert '# TYPE d_total counter\nd_total{engine="0",model_name="m"} 7.0\n' in text
    assert 'g{engine="0",model_name="m"} 0.25\n' in text
    assert 'h_seconds_bucket{engine="0",le="0.1",model_name="m"} 0.0' in text
    assert 'h_seconds_bucket{engine="0",le="1.0",model_name="m"} 1.0' in text
    assert 'h_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0' in text
    assert 'h_seconds_count{engine="0",model_name="m"} 2.0' in text
    assert 'h_seconds_sum{engine="0",model_name="m"} 5.5' in text
    assert "_created" not in text
    assert reg.value("a_total", {"reason": "x"}) == 2 and reg.value("d_total") == 7 and reg.value("b_total") == 0
    with pytest.raises(ValueError, match="b_total: labels"):
        reg.inc("b_total", labels={"reason": "x"})
    with pytest.raises(ValueError, match="a_total: labels"):
        reg.inc("a_total")
