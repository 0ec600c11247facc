"""estimate_llc on transformers models directly (estimator/hf.py): tiny random configs, short runs."""

from __future__ import annotations

import math

import pytest
import torch

from estimator import LLCConfig, estimate_llc
from estimator.functional import FlatModel
from estimator.hf import HFLogits, is_hf_model
from estimator.losses import LOSSES

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

QUICK = LLCConfig(epsilon=1e-4, num_chains=2, num_draws=20, num_burnin_steps=20, seed=0)
VOCAB = 64


def _ids(n: int = 16, t: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _gpt2(**overrides):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0, **overrides)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel._from_config(cfg)


def _unique_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_gpt2_causal_lm_with_padding_tied_weights_and_attention_restored():
    model = _gpt2()
    assert is_hf_model(model) and not is_hf_model(torch.nn.Linear(2, 2))
    assert model.lm_head.weight is model.transformer.wte.weight
    user_setting = model.config._attn_implementation
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[:4, 6:] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = estimate_llc(model, {"input_ids": ids, "attention_mask": mask}, loss="causal_lm", config=QUICK)
    assert math.isfinite(result.llc_mean)
    # Tied weights are sampled once: the count is the unique parameters', not the state dict's.
    assert result.num_params == _unique_param_count(model) == result.extras["sampled_parameters"]
    assert result.num_params < sum(v.numel() for k, v in model.state_dict().items() if "attn.bias" not in k)
    assert result.extras["attn_implementation"] == "eager"
    assert result.extras["attn_implementation_model"] == user_setting
    assert result.extras["model_type"] == "gpt2"
    assert model.config._attn_implementation == user_setting
    assert model.lm_head.weight is model.transformer.wte.weight
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # L_n(w*) is the model's own loss over the unpadded next tokens.
    labels = ids.clone()
    labels[mask == 0] = -100
    model.eval()  # the run samples in eval mode (dropout off)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert result.init_loss == pytest.approx(expected.item(), rel=1e-4)


def test_functional_call_keeps_tied_weights_tied():
    model = _gpt2()
    model.set_attn_implementation("eager")
    model.eval()
    flat = FlatModel(HFLogits(model), LOSSES["causal_lm"], torch.device("cpu"), torch.float32)
    assert "model.lm_head.weight" not in flat.names and "model.transformer.wte.weight" in flat.names
    ids = _ids(4, 8)
    w = flat.w_star + 0.05 * torch.randn(flat.w_star.shape, generator=torch.Generator().manual_seed(1))
    sampled = flat.loss(w, ids, ids)
    moved = _gpt2()
    moved.set_attn_implementation("eager")
    moved.eval()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.copy_(flat.unflatten(w)["model." + name])
    assert moved.lm_head.weight is moved.transformer.wte.weight
    with torch.no_grad():
        expected = LOSSES["causal_lm"](moved(input_ids=ids).logits, ids)
    assert sampled.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_causal_lm_families(family):
    if family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=16)
        cls = transformers.GPTNeoXForCausalLM
    else:
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=64, max_position_embeddings=16)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls._from_config(cfg)
    result = estimate_llc(model, {"input_ids": _ids()}, loss="causal_lm", config=QUICK)
    assert math.isfinite(result.llc_mean)
    assert result.num_params == _unique_param_count(model)
    assert result.extras["model_type"] == family


def _bert_config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=16, num_labels=3)


def test_bert_masked_lm():
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM._from_config(_bert_config())
    ids = _ids()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    masked = ids.clone()
    masked[:, 2] = 3  # the "[MASK]" token of this tiny vocabulary
    data = {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}
    result = estimate_llc(model, data, loss="masked_lm", config=QUICK)
    assert math.isfinite(result.llc_mean)
    model.eval()  # the run samples in eval mode (dropout off)
    with torch.no_grad():
        expected = model(input_ids=masked, labels=labels).loss
    assert result.init_loss == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="needs 'labels'"):
        estimate_llc(model, {"input_ids": ids}, loss="masked_lm", config=QUICK)


def test_bert_sequence_classification():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification._from_config(_bert_config())
    ids = _ids()
    labels = torch.arange(16) % 3
    result = estimate_llc(model, {"input_ids": ids, "labels": labels}, loss="cross_entropy", config=QUICK)
    assert math.isfinite(result.llc_mean)
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
    assert result.init_loss == pytest.approx(expected.item(), rel=1e-4)


def test_token_ids_outside_vocabulary_and_context_are_refused():
    model = _gpt2()
    with pytest.raises(ValueError, match="token id 64 but the model's vocabulary has 64"):
        estimate_llc(model, {"input_ids": torch.full((4, 8), VOCAB)}, loss="causal_lm", config=QUICK)
    with pytest.raises(ValueError, match="sequences have 17 tokens but the model's context length is 16"):
        estimate_llc(model, {"input_ids": _ids(4, 17)}, loss="causal_lm", config=QUICK)


def test_attention_that_cannot_be_switched_names_the_fix(monkeypatch):
    model = _gpt2()

    def refuse(*args, **kwargs):
        raise RuntimeError("not supported here")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        estimate_llc(model, {"input_ids": _ids()}, loss="causal_lm", config=QUICK)


def test_automatic_step_size_on_default_sdpa_attention():
    """The curvature pass (Hessian-vector products) runs although the model defaults to SDPA."""
    cfg = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel._from_config(cfg)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 32, (8, 6), generator=torch.Generator().manual_seed(0))
    config = LLCConfig(num_chains=2, num_draws=10, num_burnin_steps=10, seed=0)
    result = estimate_llc(model, {"input_ids": ids}, loss="causal_lm", config=config)
    assert result.extras["epsilon_auto"] and math.isfinite(result.epsilon) and result.epsilon > 0
    assert math.isfinite(result.diagnostics["top_hessian_eigenvalue_at_w_star"])
    assert model.config._attn_implementation == "sdpa"
