"""Tiny random Hugging Face models of every allowlisted type, written with save_pretrained, and the
archives (zip, tar, tar.gz) the service accepts; shared by the hf service and security tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 64
CONTEXT = 32
# model_type -> (task, config fields): one layer, width 16, so that a job takes seconds.
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("causal_lm", {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": CONTEXT,
                           "bos_token_id": 0, "eos_token_id": 0}),
    "gpt_neox": ("causal_lm", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 32, "max_position_embeddings": CONTEXT,
                               "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("causal_lm", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "num_key_value_heads": 1, "intermediate_size": 32, "max_position_embeddings": CONTEXT,
                            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}),
    "qwen2": ("causal_lm", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "num_key_value_heads": 1, "intermediate_size": 32, "max_position_embeddings": CONTEXT,
                            "bos_token_id": 0, "eos_token_id": 0}),
    "mistral": ("causal_lm", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "num_key_value_heads": 1, "intermediate_size": 32, "max_position_embeddings": CONTEXT,
                              "bos_token_id": 0, "eos_token_id": 0, "sliding_window": None}),
    "bert": ("masked_lm", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 32, "max_position_embeddings": CONTEXT, "pad_token_id": 0}),
}


def tiny_model(model_type: str, seed: int = 0, **overrides: Any) -> Any:
    """A freshly initialised tiny model of ``model_type`` for its task in TINY (eval mode)."""
    import torch
    import transformers

    task, fields = TINY[model_type]
    config = transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, **{**fields, **overrides})
    auto = {"causal_lm": transformers.AutoModelForCausalLM, "masked_lm": transformers.AutoModelForMaskedLM,
            "sequence_classification": transformers.AutoModelForSequenceClassification}[task]
    torch.manual_seed(seed)
    return auto.from_config(config).eval()


def save(model: Any, directory: Path, **kwargs: Any) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def zip_directory(directory: Path, target: Path, *, top: str | None = None) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, f"{top}/{path.name}" if top else path.name)
    return target


def tar_directory(directory: Path, target: Path, *, gz: bool = False, top: str | None = "model") -> Path:
    with tarfile.open(target, "w:gz" if gz else "w") as tf:
        for path in sorted(directory.iterdir()):
            tf.add(path, f"{top}/{path.name}" if top else path.name)
    return target


def add_tar_member(tf: tarfile.TarFile, name: str, data: bytes = b"", **attributes: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attributes.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data) if data else None)


def token_ids(n: int = 16, seq_len: int = 8, vocab: int = VOCAB, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(n, seq_len)).astype(np.int64)


def masked_labels(ids: np.ndarray, seed: int = 1) -> np.ndarray:
    """Masked-LM labels: the true token at about a third of the positions, -100 elsewhere."""
    mask = np.random.default_rng(seed).random(ids.shape) < 0.35
    mask[:, 0] = True  # every sequence has a target
    return np.where(mask, ids, -100).astype(np.int64)


def write_token_npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
