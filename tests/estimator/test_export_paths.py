"""Models that reach the estimator as ``torch.export`` programs loaded from disk (the service's .pt2 path).

- Tied weights stay tied: a loaded program holds an embedding tied to the output layer as two
  Parameter objects over the same memory; they are one weight, sampled once, so λ̂ and the reported
  parameter count are those of the eager model.
- A program exported with a dynamic batch dimension that vmap cannot batch runs its chains
  sequentially, and the result says so and why (never silently).
"""

from __future__ import annotations

import torch
from torch.export import Dim

from estimator import LLCConfig, estimate_llc
from estimator.architectures import build_model

SHORT = LLCConfig(epsilon=1e-4, num_chains=2, num_draws=20, num_burnin_steps=20, seed=3)


class TiedLM(torch.nn.Module):
    """Embedding and output layer share one weight, as in GPT-2."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(40, 12)
        self.head = torch.nn.Linear(12, 40, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embedding(tokens))).mean(dim=1)


def _reloaded(program: torch.export.ExportedProgram, tmp_path) -> torch.nn.Module:
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    return torch.export.load(str(path)).module()


def test_tied_weights_of_a_loaded_export_are_sampled_once(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 40, (64, 6))
    labels = torch.randint(0, 40, (64,))
    loaded = _reloaded(torch.export.export(model, (tokens,)), tmp_path)
    # The loaded program really does hold two Parameter objects over one memory (what this guards).
    params = dict(loaded.named_parameters())
    assert len(params) == 2 and params["embedding.weight"] is not params["head.weight"]
    assert params["embedding.weight"].data_ptr() == params["head.weight"].data_ptr()

    eager = estimate_llc(model, (tokens, labels), config=SHORT)
    exported = estimate_llc(loaded, (tokens, labels), config=SHORT)
    assert eager.num_params == exported.num_params == 40 * 12
    # Same weights, same seed, one parameter vector: the same chains up to the export's rounding.
    assert abs(exported.llc_mean - eager.llc_mean) <= 1e-3 * max(1.0, abs(eager.llc_mean))


def test_dynamic_batch_export_that_vmap_cannot_batch_says_why(tmp_path):
    torch.manual_seed(0)
    spec = {"kind": "transformer", "vocab_size": 32, "context_length": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}
    model = build_model(spec)
    tokens = torch.randint(0, 32, (16, 8))
    program = torch.export.export(model, (tokens,), dynamic_shapes=({0: Dim("batch")},))
    loaded = _reloaded(program, tmp_path)

    def next_token(logits, targets):
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32), targets[:, 1:].reshape(-1))

    result = estimate_llc(loaded, (tokens, tokens.clone()), loss=next_token, config=SHORT.replace(chain_mode="auto"))
    assert result.chain_mode == "sequential"
    assert "cannot be vmapped" in result.chain_mode_reason
    assert "vmap_unavailable" in [w["code"] for w in result.warnings]
