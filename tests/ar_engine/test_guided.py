"""Structured output in the engine: the grammar's rows equal HF generate with xgrammar's own
logits processor, the output validates, and the unconstrained requests beside them keep their
tokens."""
import json

import jsonschema
import pytest
import torch
import xgrammar as xgr
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
from xgrammar.contrib.hf import LogitsProcessor as XgrLogitsProcessor

from omnistage.ar_engine.engine import EngineConfig, EngineRequest, LLMEngine, Prefilled
from omnistage.ar_engine.guided import GuideSpec, _strict_strings, guide_from_request
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.errors import RequestRejected
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.ar import load_model

SCHEMA = {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
    "n": {"type": "integer", "minimum": 0, "maximum": 99}, "tag": {"type": "string", "maxLength": 6}},
    "required": ["ok", "color", "n", "tag"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def family(request):
    path = ensure_tiny(request.param)
    tok = AutoTokenizer.from_pretrained(path)
    return tok, AutoModelForCausalLM.from_pretrained(path).eval(), load_model(str(path), torch.float32, "cpu")


def prompts(tok, n):
    return [tok(" ".join(["Describe the picture"] * (1 + i % 5)) + f" number {i}")["input_ids"] for i in range(n)]


def run(engine, requests):
    for rid, ids, sampling in requests:
        engine.add(EngineRequest(rid, ids, sampling))
    tokens, text = {}, {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.tokens)
            text[out.rid] = text.get(out.rid, "") + out.text
    return tokens, text


def hf_guided(tok, ref, ids, spec_kind, value, new):
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=ref.config.vocab_size, stop_token_ids=[tok.eos_token_id])
    compiler = xgr.GrammarCompiler(info)
    if spec_kind == "json_schema":  # the grammar the engine compiles (control characters refused in strings)
        ebnf = xgr.Grammar.from_json_schema(value, any_whitespace=False, separators=(",", ":"))
        grammar = compiler.compile_grammar(_strict_strings(str(ebnf)))
    else:
        grammar = compiler.compile_regex(value)
    with torch.inference_mode():
        out = ref.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=new, do_sample=False,
                           logits_processor=LogitsProcessorList([XgrLogitsProcessor(grammar)]))
    return out[0, len(ids):].tolist()


def test_guided_rows_equal_hf_with_the_grammar_and_free_rows_keep_their_tokens(family):
    tok, ref, paged = family
    batch = prompts(tok, 12)
    guided = {i: {"response_format": FORMAT} if i % 3 == 0 else {"structured_outputs": {"regex": "[a-c]{2}-[0-9]{3}"}}
              for i in range(12) if i % 3 != 2}

    def sampling(i):
        return SamplingParams.from_request(dict(max_tokens=80, temperature=0, **guided.get(i, {})), None, 512)

    reqs = [(f"r{i}", ids, sampling(i)) for i, ids in enumerate(batch)]
    tokens, text = run(LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=16), reqs)
    free, _ = run(LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=16),
                  [r for i, r in enumerate(reqs) if i not in guided])
    for i, ids in enumerate(batch):
        rid = f"r{i}"
        if i not in guided:
            assert tokens[rid] == free[rid]
            continue
        spec = reqs[i][2].guide
        assert tokens[rid] == hf_guided(tok, ref, ids, spec.kind, spec.value, 80), i
        if spec.kind == "json_schema":  # (json.loads is strict: no raw control characters in strings)
            jsonschema.validate(json.loads(text[rid]), SCHEMA)
        else:
            assert len(text[rid]) == 6 and text[rid][2] == "-" and text[rid][3:].isdigit(), text[rid]


def test_choice_and_json_object(family):
    tok, _, paged = family
    ids = prompts(tok, 1)[0]
    engine = LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=4)
    reqs = [("c", ids, SamplingParams.from_request({"max_tokens": 20, "temperature": 0.8, "seed": 1,
                                                    "structured_outputs": {"choice": ["yes", "no", "maybe so"]}}, None)),
            ("j", ids, SamplingParams.from_request({"max_tokens": 60, "temperature": 0, "response_format":
                                                    {"type": "json_object"}}, None))]
    _, text = run(engine, reqs)
    assert text["c"] in ("yes", "no", "maybe so")
    assert text["j"].startswith("{") and not engine.matchers


def test_a_request_prefilled_elsewhere_continues_its_grammar(family):
    """Disaggregated: the prefill engine samples the first token under the grammar, the decode
    engine's matcher starts past it; the tokens equal one engine's."""
    tok, _, paged = family
    ids = prompts(tok, 3)[2]
    params = {"max_tokens": 80, "temperature": 0, "response_format": FORMAT}
    whole, _ = run(LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=2),
                   [("x", ids, SamplingParams.from_request(params, None))])
    prefill = LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=2)
    req = EngineRequest("x", ids, SamplingParams.from_request(params, None), hold=True)
    prefill.add(req)
    first = prefill.step()[0].tokens[0]
    decode = LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=2)
    decode.add_prefilled(Prefilled(EngineRequest("x", ids, SamplingParams.from_request(params, None)), first,
                                   prefill.export_kv("x")))
    split, text = run(decode, [])
    assert split["x"] == whole["x"] and split["x"][0] == first  # (the decode engine emits the first token too)
    jsonschema.validate(json.loads(tok.decode(whole["x"][:-1])), SCHEMA)


@pytest.mark.parametrize("params, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"choices": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
])
def test_a_malformed_request_names_its_field(params, param):
    with pytest.raises(RequestRejected) as err:
        guide_from_request(params)
    assert err.value.param == param


@pytest.mark.parametrize("spec", [GuideSpec("regex", "(unclosed", "structured_outputs.regex"),
                                  GuideSpec("grammar", "root ::= missing_rule", "structured_outputs.grammar"),
                                  GuideSpec("json_schema", json.dumps({"type": "nonsense"}))])
def test_a_grammar_that_does_not_compile_is_refused_naming_its_field(family, spec):
    tok, _, paged = family
    engine = LLMEngine(paged, tok, EngineConfig(num_blocks=256), max_seqs=2)
    with pytest.raises(RequestRejected) as err:
        engine.compile_guide(spec)
    assert err.value.param == spec.param and "cannot be compiled" in str(err.value)
