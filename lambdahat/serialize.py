"""Turning in-memory objects into the files the server accepts: safetensors bytes, token npz archives,
tar archives of ``save_pretrained`` folders, ``.pt2`` exports and architecture JSON
(``infer_architecture`` is the architecture registry's, re-exported here).

torch, transformers and datasets are never imported here: whoever hands over one of their objects
has imported them already, so objects are recognised by duck typing and ``sys.modules``.
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np

from estimator.architectures import infer_architecture

__all__ = [
    "TOKEN_FIELDS", "dataset_to_safetensors", "exported_program_to_pt2", "hf_dataset_to_tokens",
    "infer_architecture", "is_exported_program", "is_hf_dataset", "is_pretrained_model", "is_token_dataset",
    "is_torch_module", "is_torch_tensor", "is_torchvision_model", "pretrained_files", "state_dict_to_safetensors",
    "step_from_filename", "step_from_path", "tokens_to_npz", "write_pretrained_tar",
]

# The arrays of a token dataset, as the server stores them (estimator.tokens.TOKEN_FIELDS).
TOKEN_FIELDS = ("input_ids", "attention_mask", "labels")


def _loaded_torch() -> Any:
    # Whoever holds a tensor or a module has imported torch already: no need to import it here.
    return sys.modules.get("torch")


def is_torch_tensor(value: Any) -> bool:
    torch = _loaded_torch()
    return torch is not None and isinstance(value, torch.Tensor)


def is_torch_module(value: Any) -> bool:
    """True for any ``torch.nn.Module`` (user subclasses included), decided without importing torch."""
    torch = _loaded_torch()
    return torch is not None and isinstance(value, torch.nn.Module)


def dataset_to_safetensors(arrays: Mapping[str, Any]) -> bytes:
    """``{"x": ..., "y": ...}`` (numpy arrays, torch tensors or nested lists) as safetensors bytes."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"a dataset is a path or a dict of arrays {{'x': ..., 'y': ...}}; got {type(arrays).__name__}")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"a dataset dict needs arrays 'x' and 'y'; missing {missing} (got keys {sorted(arrays)})")
    if any(is_torch_tensor(v) for v in arrays.values()):
        import torch
        from safetensors.torch import save

        tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in arrays.items()}
        return save(tensors)
    from safetensors.numpy import save as save_numpy

    converted = {}
    for key, value in arrays.items():
        array = np.ascontiguousarray(value)
        if array.dtype == object or array.dtype.kind in "USV":
            raise ValueError(f"dataset array {key!r} has dtype {array.dtype}; it must be numeric")
        converted[key] = array
    return save_numpy(converted)


def state_dict_to_safetensors(state_dict: Mapping[str, Any]) -> bytes:
    """A torch state_dict as safetensors bytes (tensors that share storage are copied apart)."""
    import torch
    from safetensors.torch import save

    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        # clone(): safetensors refuses tensors that share memory (tied weights, views).
        tensors[key] = value.detach().cpu().contiguous().clone()
    return save(tensors)


_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")


def step_from_filename(filename: str) -> int:
    """The last integer in a file's name without its extension: ``run/step_00100.safetensors`` -> 100."""
    stem = PurePath(filename).stem  # drop only the last extension: "model.step100.pt" -> "model.step100"
    match = _LAST_INTEGER.search(stem)
    if match is None:
        raise ValueError(f"no step number in file name {filename!r} (expected e.g. step_100.safetensors)")
    return int(match.group(1))


def step_from_path(path: str | PurePath) -> int:
    """The step of a checkpoint file (the last integer of its name without the extension, as
    ``step_from_filename``) or of a checkpoint folder (the last integer of the whole folder name:
    ``runs/pythia-tiny/step1000/`` -> 1000, ``checkpoint-500`` -> 500)."""
    path = Path(path)
    if not path.is_dir():
        return step_from_filename(str(path))
    match = _LAST_INTEGER.search(path.name)
    if match is None:
        raise ValueError(f"no step number in folder name {path.name!r} (expected e.g. step1000 or checkpoint-1000)")
    return int(match.group(1))


# -- token datasets ---------------------------------------------------------------------------------


def is_hf_dataset(value: Any) -> bool:
    """A Hugging Face ``datasets.Dataset`` (duck-typed: ``column_names`` and ``with_format``)."""
    return callable(getattr(value, "with_format", None)) and hasattr(value, "column_names")


def is_token_dataset(value: Any) -> bool:
    """A dict holding ``input_ids`` or a Hugging Face dataset: what ``tokens_to_npz`` takes."""
    return (isinstance(value, Mapping) and "input_ids" in value) or is_hf_dataset(value)


def hf_dataset_to_tokens(dataset: Any) -> dict[str, np.ndarray]:
    """The token columns (``input_ids`` and, when present, ``attention_mask`` and ``labels``) of a Hugging
    Face dataset as numpy arrays; other columns (the text, ...) are left out."""
    columns = dataset.column_names
    if isinstance(columns, Mapping):  # a DatasetDict: one column list per split
        raise ValueError(
            f"this is a DatasetDict with splits {sorted(columns)}; upload one split, e.g. dataset['train']"
        )
    if "input_ids" not in columns:
        raise ValueError(
            f"a Hugging Face dataset needs an 'input_ids' column (tokenize it first, e.g. "
            f"dataset.map(lambda b: tokenizer(b['text'], truncation=True, padding='max_length'), batched=True)); "
            f"its columns are {list(columns)}"
        )
    present = [name for name in TOKEN_FIELDS if name in columns]
    arrays = dataset.with_format("numpy", columns=present)[:]
    return {name: arrays[name] for name in present}


def _token_array(name: str, value: Any) -> np.ndarray:
    if is_torch_tensor(value):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(
            f"{name!r} has rows of unequal length; pad them to one length (e.g. tokenizer(..., padding='max_length', "
            f"max_length=T, truncation=True)) and mark the padding with attention_mask = 0"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name!r} must hold integers (token ids, 0/1 mask, or labels); got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def tokens_to_npz(tokens: Any) -> bytes:
    """A token dataset as npz bytes with members ``input_ids`` [N, T] and, when given, ``attention_mask``
    [N, T] (0/1) and ``labels`` ([N, T] for language modelling, [N] for sequence classification).

    ``tokens`` is a dict of numpy arrays, torch tensors or nested lists, or a Hugging Face dataset
    with an ``input_ids`` column. Every array is sent as int64."""
    if is_hf_dataset(tokens):
        tokens = hf_dataset_to_tokens(tokens)
    if not isinstance(tokens, Mapping) or "input_ids" not in tokens:
        raise TypeError(f"a token dataset is a dict with 'input_ids' or a Hugging Face Dataset; got {type(tokens).__name__}")
    unknown = sorted(set(tokens) - set(TOKEN_FIELDS))
    if unknown:
        raise ValueError(f"a token dataset holds {', '.join(TOKEN_FIELDS)}; unexpected keys {unknown}")
    arrays = {name: _token_array(name, tokens[name]) for name in TOKEN_FIELDS if name in tokens}
    input_ids = arrays["input_ids"]
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"'input_ids' must be a non-empty [N, T] array of token ids; got shape {list(input_ids.shape)}")
    if input_ids.min() < 0:
        raise ValueError(f"'input_ids' holds a negative token id ({int(input_ids.min())})")
    mask = arrays.get("attention_mask")
    if mask is not None:
        if mask.shape != input_ids.shape:
            raise ValueError(f"'attention_mask' has shape {list(mask.shape)}, 'input_ids' {list(input_ids.shape)}; they must match")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("'attention_mask' must hold only 0 (padding) and 1 (token)")
    labels = arrays.get("labels")
    if labels is not None and labels.shape not in (input_ids.shape, input_ids.shape[:1]):
        raise ValueError(
            f"'labels' has shape {list(labels.shape)}; expected {list(input_ids.shape)} (one per token) "
            f"or {list(input_ids.shape[:1])} (one per sequence)"
        )
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# -- checkpoints beyond state_dicts -----------------------------------------------------------------


def is_pretrained_model(value: Any) -> bool:
    """A transformers ``PreTrainedModel`` (duck-typed: ``save_pretrained``, ``config.model_type`` and a
    class named ``PreTrainedModel`` among its bases)."""
    return (
        callable(getattr(value, "save_pretrained", None))
        and hasattr(getattr(value, "config", None), "model_type")
        and any(cls.__name__ == "PreTrainedModel" for cls in type(value).__mro__)
    )


def is_torchvision_model(value: Any) -> bool:
    return is_torch_module(value) and type(value).__module__.startswith("torchvision.models")


def is_exported_program(value: Any) -> bool:
    export = sys.modules.get("torch.export")
    program_class = getattr(export, "ExportedProgram", None)
    return program_class is not None and isinstance(value, program_class)


def exported_program_to_pt2(program: Any) -> bytes:
    """A ``torch.export.ExportedProgram`` as the bytes of a ``.pt2`` archive (``torch.export.save``)."""
    import torch

    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


_WEIGHT_SUFFIX = ".safetensors"
_INDEX_SUFFIX = ".safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "pytorch_model.pt")


def pretrained_files(directory: str | Path) -> list[Path]:
    """The files of a ``save_pretrained`` folder the server needs: ``config.json``, the safetensors
    weights (one file, or an index with its shards). Tokenizer files, optimizer states and anything
    else a training run keeps there stay behind: they are not needed, and pickles would be refused."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"no such folder: {directory}")
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory} has no config.json; a checkpoint folder is what model.save_pretrained(folder) writes")
    weights = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith((_WEIGHT_SUFFIX, _INDEX_SUFFIX)))
    if not weights:
        pickles = [name for name in _PICKLE_WEIGHTS if (directory / name).exists()]
        found = f" (it has {', '.join(pickles)}: pickle files, which the server never loads)" if pickles else ""
        raise ValueError(
            f"{directory} has no .safetensors weights{found}; save them with "
            f"model.save_pretrained(folder, safe_serialization=True)"
        )
    return [directory / "config.json", *weights]


def write_pretrained_tar(directory: str | Path, fileobj: IO[bytes]) -> None:
    """Write an uncompressed tar of a ``save_pretrained`` folder's needed files (``pretrained_files``),
    at the archive's top level. Symlinked files (a Hugging Face cache snapshot links its blobs) are
    stored as the files they point to, since the server refuses links."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as archive:
        for path in pretrained_files(directory):
            archive.add(path, arcname=path.name, recursive=False)
