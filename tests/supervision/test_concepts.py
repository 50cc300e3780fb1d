"""Concept sets (paper 3.1): files, templates, an OpenAI-compatible LLM (fake local server), filtering."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from salfcbm.supervision.concepts import (
    LF_CBM_PROMPTS,
    ConceptFilterReport,
    LLMError,
    concepts_from_templates,
    filter_concepts,
    format_concept,
    generate_concepts,
    load_concepts,
    save_concepts,
    unique_concepts,
)
from salfcbm.errors import InputError, MissingExtraError


# -- files and templates -----------------------------------------------------------------
def test_load_handles_blanks_comments_duplicates(tmp_path):
    p = tmp_path / "concepts.txt"
    p.write_text("striped fur\n\n   \n# a comment\nwhiskers  \nStriped  fur\nlong   tail\nwhiskers\n")
    assert load_concepts(p) == ["striped fur", "whiskers", "long tail"]
    save_concepts(tmp_path / "out.txt", ["a", "b", "a"])
    assert (tmp_path / "out.txt").read_text() == "a\nb\n"
    assert load_concepts(tmp_path / "out.txt") == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="one concept per line"):
        load_concepts(tmp_path / "missing.txt")


def test_templates():
    assert concepts_from_templates(["cat", "dog"]) == ["an image of a cat", "an image of a dog"]
    assert concepts_from_templates(["cat"], "{class} ears") == ["cat ears"]
    with pytest.raises(InputError, match=r"\{class\}"):
        concepts_from_templates(["cat"], ["a photo of a {}"])
    with pytest.raises(InputError, match="list of class names"):
        concepts_from_templates("cat")


def test_format_and_unique():
    assert format_concept("1. Sharp, pointed teeth.") == "sharp pointed teeth"
    assert format_concept("- The ocean") == "the ocean"  # articles are kept, as in LF-CBM's lists
    assert format_concept("* an anchor") == "an anchor"
    assert unique_concepts({"cat": ["fur", "tail"], "dog": ["Fur", "bone"]}) == ["fur", "tail", "bone"]


# -- LLM generation against a fake local OpenAI-compatible server --------------------------
ANSWERS = {
    "important features": "1. Orange scales\n2. Long fins\n3. Small mouth",
    "commonly seen around": "- fish tank\n- Water plants\n- gravel",
    "superclasses": "fish, animal, pet",
}


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    fail = False

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail:
            self.send_response(400)
            payload = {"error": {"message": "model not found", "type": "invalid_request_error"}}
        else:
            prompt = body["messages"][-1]["content"]
            text = next(v for k, v in ANSWERS.items() if k in prompt)
            self.send_response(200)
            payload = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        data = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def fake_llm(monkeypatch):
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "SALFCBM_BASE_URL", "SALFCBM_API_KEY", "SALFCBM_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    _FakeOpenAI.requests = []
    _FakeOpenAI.fail = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_generate_concepts_with_lf_cbm_prompts(fake_llm, tmp_path):
    cache = tmp_path / "llm.json"
    out = generate_concepts(["goldfish", "koi"], base_url=fake_llm, api_key="sk-test", model="tiny-llm", cache=cache, progress=False)
    assert out["goldfish"] == ["orange scales", "long fins", "small mouth", "fish tank", "water plants", "gravel", "fish", "animal", "pet"]
    assert out["koi"] == out["goldfish"]
    reqs = _FakeOpenAI.requests
    assert len(reqs) == 6 and all(r["path"] == "/v1/chat/completions" for r in reqs)
    assert all(r["auth"] == "Bearer sk-test" and r["body"]["model"] == "tiny-llm" for r in reqs)
    asked = {r["body"]["messages"][-1]["content"] for r in reqs}
    assert asked == {t.replace("{class}", c) for t in LF_CBM_PROMPTS.values() for c in ["goldfish", "koi"]}
    # a second run is answered from the cache
    again = generate_concepts(["goldfish", "koi"], base_url=fake_llm, api_key="sk-test", model="tiny-llm", cache=cache, progress=False)
    assert again == out and len(_FakeOpenAI.requests) == 6


def test_generate_concepts_endpoint_from_env(fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/never-used")
    monkeypatch.setenv("SALFCBM_BASE_URL", fake_llm)  # SALFCBM_ wins over OPENAI_
    monkeypatch.setenv("SALFCBM_LLM_MODEL", "env-model")
    out = generate_concepts(["goldfish"], prompts={"sup": 'Give superclasses for the word "{class}":'}, progress=False)
    assert out == {"goldfish": ["fish", "animal", "pet"]}
    assert _FakeOpenAI.requests[0]["body"]["model"] == "env-model"
    assert _FakeOpenAI.requests[0]["auth"] == "Bearer not-needed"  # local server: no key needed


def test_generate_concepts_errors(fake_llm, monkeypatch):
    _FakeOpenAI.fail = True
    with pytest.raises(LLMError, match="model not found"):
        generate_concepts(["goldfish"], base_url=fake_llm, max_retries=0, progress=False)
    with pytest.raises(InputError, match="SALFCBM_BASE_URL"):
        generate_concepts(["goldfish"], progress=False)
    monkeypatch.setitem(sys.modules, "openai", None)  # simulate the missing extra
    with pytest.raises(MissingExtraError, match=r"pip install 'salfcbm\[llm\]'"):
        generate_concepts(["goldfish"], base_url=fake_llm, progress=False)


# -- filtering ------------------------------------------------------------------------
class _VecScorer:
    """Text embeddings from a fixed table, so similarity cutoffs are exact."""

    def __init__(self, table):
        self.table = {k: torch.tensor(v, dtype=torch.float32) for k, v in table.items()}

    def text_embeddings(self, texts):
        return torch.nn.functional.normalize(torch.stack([self.table[t] for t in texts]), dim=-1)


def test_filter_reports_every_drop_with_reason():
    scorer = _VecScorer(
        {
            "cat": [1, 0, 0, 0],
            "dog": [0, 1, 0, 0],
            "kitty": [0.95, 0.05, 0.1, 0],  # ~0.99 to "cat"
            "whiskers": [0, 0, 1, 0],
            "whisker": [0, 0.1, 1, 0.1],  # ~0.98 to "whiskers"
            "grass": [0, 0, 0, 1],
            "sky": [0, 0.5, 0, 0.5],
        }
    )
    concepts = ["whiskers", "kitty", "whisker", "grass", "Grass", "", "a concept that is far too long to keep", "dog", "sky"]
    act = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1])  # top-k means, per input concept
    r = filter_concepts(concepts, classes=["cat", "dog"], scorer=scorer, activations=act)
    assert isinstance(r, ConceptFilterReport)
    assert r.kept == ["whisker", "grass"]  # LF-CBM keeps the one with the higher total similarity
    reasons = dict(r.dropped)
    assert reasons["Grass"].startswith("duplicate") and reasons[""].startswith("empty")
    assert reasons["a concept that is far too long to keep"] == "too long: 38 > 30 characters"
    assert reasons["dog"].startswith("too similar to class: equals class 'dog'")
    assert reasons["kitty"].startswith("too similar to class: 'cat'")
    assert reasons["whiskers"].startswith("too similar to concept: 'whisker'")
    assert reasons["sky"].startswith("never fires: mean top-5 similarity 0.100 <= 0.25")
    assert len(r.dropped) + len(r.kept) == len(concepts)
    assert r.reason("kitty") == reasons["kitty"] and r.reason("grass") is None
    assert r.reasons["too similar to class"] == 2
    json.dumps(r.to_dict())
    assert "kept 2 concepts, dropped 7" in str(r)


def test_filter_activation_from_image_similarities_and_store(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _dist_worker import ToyImages, ToyScorer

    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    sims = torch.tensor([[0.1, 0.5], [0.2, 0.6], [0.3, 0.1]])  # (N=3, M=2) image similarities
    r = filter_concepts(["rare", "common"], activations=sims, top_k=2, activation_cutoff=0.25)
    assert r.kept == ["common"] and r.reason("rare").startswith("never fires: mean top-2 similarity 0.250")

    store = compute_similarity_store(tmp_path / "s", ToyImages(6), ToyScorer(), PromptGrid(grid=2, radius=3), progress=False)
    concepts = ["red", "green", "blue"]
    act = store.concept_activity(concepts, top_k=5)
    cutoff = float(act.median())
    r = filter_concepts(concepts, activations=store, activation_cutoff=cutoff)
    assert r.kept == [c for c, a in zip(concepts, act) if a > cutoff]
    assert len(r.dropped) == 3 - len(r.kept)


def test_filter_with_tiny_clip_scorer():
    import open_clip

    from salfcbm.supervision.scorers import CLIPScorer

    open_clip.factory._MODEL_CONFIGS.setdefault(
        "salf-test-tiny",
        {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
    )
    scorer = CLIPScorer("salf-test-tiny", pretrained=None, device="cpu")
    concepts = ["striped fur", "wheels", "blue sky"]
    t = scorer.text_embeddings(concepts)
    sims = (t @ t.T).tril(-1)
    j, i = divmod(int(sims.argmax()), 3)  # the most similar pair (i < j)
    cutoff = float(sims[j, i]) - 1e-4
    r = filter_concepts(concepts, classes=["tiger"], scorer=scorer, class_similarity=1.0, concept_similarity=cutoff)
    lose, win = (i, j) if (t @ t.T).sum(1)[i] < (t @ t.T).sum(1)[j] else (j, i)  # LF-CBM's rule
    assert r.reason(concepts[lose]).startswith(f"too similar to concept: {concepts[win]!r}")
    assert concepts[win] in r.kept and len(r.kept) == 2


def test_filter_validation():
    with pytest.raises(InputError, match="single string"):
        filter_concepts("fur")
    with pytest.raises(InputError, match="class_similarity"):
        filter_concepts(["fur"], class_similarity=2.0)
    with pytest.raises(InputError, match=r"\(N, 2\) tensor"):
        filter_concepts(["a", "b"], activations=torch.zeros(3, 5))
