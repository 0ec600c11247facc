"""Language-model losses against a hand computation, and token data checks (estimator/tokens.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from estimator import LLCConfig, estimate_llc
from estimator.architectures import build_model
from estimator.losses import IGNORE_INDEX, LOSSES
from estimator.tokens import TOKEN_FIELDS, token_data

QUICK = LLCConfig(epsilon=1e-4, num_chains=2, num_draws=20, num_burnin_steps=20, seed=0)


def _log_softmax_rows(logits: torch.Tensor) -> list[list[list[float]]]:
    return torch.log_softmax(logits.double(), dim=-1).tolist()


def test_causal_lm_is_shifted_token_mean_ignoring_minus_100():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=gen)
    labels = torch.tensor([[1, 2, 3, 4], [0, 3, IGNORE_INDEX, IGNORE_INDEX]])
    logp = _log_softmax_rows(logits)
    terms = []
    for b in range(2):
        for t in range(3):  # position t predicts label t+1
            target = int(labels[b, t + 1])
            if target != IGNORE_INDEX:
                terms.append(-logp[b][t][target])
    assert len(terms) == 4  # 3 from the first sequence, 1 from the second (padding not counted)
    assert LOSSES["causal_lm"](logits, labels).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_masked_lm_is_unshifted_token_mean_over_labelled_positions():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, generator=gen)
    labels = torch.tensor([[IGNORE_INDEX, 4, IGNORE_INDEX], [5, IGNORE_INDEX, 0]])
    logp = _log_softmax_rows(logits)
    expected = -(logp[0][1][4] + logp[1][0][5] + logp[1][2][0]) / 3
    assert LOSSES["masked_lm"](logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_token_loss_without_counted_tokens_is_zero_not_nan():
    logits = torch.randn(2, 3, 4)
    labels = torch.full((2, 3), IGNORE_INDEX)
    assert LOSSES["masked_lm"](logits, labels).item() == 0.0
    assert LOSSES["causal_lm"](logits, labels).item() == 0.0


def test_cross_entropy_scores_sequence_classification():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    expected = -torch.log_softmax(logits, -1)[torch.arange(4), labels].mean()
    assert LOSSES["cross_entropy"](logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_token_loss_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"logits \[batch, seq, vocab\] and labels \[batch, seq\]"):
        LOSSES["causal_lm"](torch.randn(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))


def test_causal_default_labels_mask_padding():
    ids = np.array([[5, 6, 7, 0], [1, 2, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    tokens = token_data({"input_ids": ids, "attention_mask": mask}, "causal_lm")
    assert tokens.input_ids.dtype == torch.int64
    assert tokens.labels.tolist() == [[5, 6, 7, -100], [1, 2, -100, -100]]
    assert TOKEN_FIELDS == ("input_ids", "attention_mask", "labels")


@pytest.mark.parametrize(
    ("data", "loss", "match"),
    [
        ({"attention_mask": np.ones((2, 3))}, "causal_lm", "needs an 'input_ids' entry"),
        ({"input_ids": np.ones((2, 3), dtype=np.float32)}, "causal_lm", "input_ids must hold integers"),
        ({"input_ids": np.ones(3, dtype=np.int64)}, "causal_lm", r"shape \[sequences, tokens\]"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64), "attention_mask": np.ones((2, 4), dtype=np.int64)},
         "causal_lm", "attention_mask has shape"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64), "labels": np.ones((2, 4), dtype=np.int64)},
         "causal_lm", "labels has shape"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64)}, "masked_lm", "needs 'labels'"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64)}, "cross_entropy", "needs 'labels'"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64), "labels": np.ones(2, dtype=np.int64)},
         "masked_lm", "one label per token"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64), "labels": np.ones((2, 3), dtype=np.int64)},
         "cross_entropy", "one class per sequence"),
        ({"input_ids": np.ones((2, 3), dtype=np.int64), "token_type_ids": np.ones((2, 3))},
         "causal_lm", "unknown field"),
        ({"input_ids": [[1, 2], [3]]}, "causal_lm", "ragged"),
        ({"input_ids": -np.ones((2, 3), dtype=np.int64)}, "causal_lm", "negative token id"),
        ({"input_ids": np.ones((1, 3), dtype=np.int64)}, "causal_lm", "at least 2 sequences"),
    ],
)
def test_token_data_refusals_name_the_problem(data, loss, match):
    with pytest.raises(ValueError, match=match):
        token_data(data, loss)


def test_hf_dataset_is_read_by_column():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"text": ["a", "b", "c"], "input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
         "attention_mask": [[1, 1, 1], [1, 1, 0], [1, 0, 0]]}
    )
    tokens = token_data(ds, "causal_lm")
    assert tokens.input_ids.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert tokens.labels.tolist() == [[1, 2, 3], [4, 5, -100], [7, -100, -100]]
    with pytest.raises(ValueError, match="needs an 'input_ids' column"):
        token_data(ds.remove_columns("input_ids"), "causal_lm")
    ragged = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]})
    with pytest.raises(ValueError, match="different lengths"):
        token_data(ragged, "causal_lm")


def _tiny_transformer():
    torch.manual_seed(0)
    return build_model({"kind": "transformer", "vocab_size": 16, "context_length": 8, "d_model": 16,
                        "n_layers": 1, "n_heads": 2})


def test_builtin_transformer_scores_with_causal_lm_end_to_end():
    model = _tiny_transformer()
    ids = torch.randint(0, 16, (32, 8), generator=torch.Generator().manual_seed(0))
    result = estimate_llc(model, {"input_ids": ids}, loss="causal_lm", config=QUICK)
    assert math.isfinite(result.llc_mean) and result.n == 32
    with torch.no_grad():
        logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 16), ids[:, 1:].reshape(-1))
    assert result.init_loss == pytest.approx(expected.item(), rel=1e-5)
    # numpy ids and the same ids as an (x, y) pair give the same run
    again = estimate_llc(model, {"input_ids": ids.numpy()}, loss="causal_lm", config=QUICK)
    pair = estimate_llc(model, (ids, ids), loss="causal_lm", config=QUICK)
    assert again.llc_mean == result.llc_mean == pair.llc_mean


def test_builtin_transformer_with_hf_dataset():
    datasets = pytest.importorskip("datasets")
    model = _tiny_transformer()
    ids = torch.randint(0, 16, (32, 8), generator=torch.Generator().manual_seed(0))
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    result = estimate_llc(model, ds, loss="causal_lm", config=QUICK)
    assert result.llc_mean == estimate_llc(model, {"input_ids": ids}, loss="causal_lm", config=QUICK).llc_mean
