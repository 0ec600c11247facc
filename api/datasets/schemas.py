"""Dataset responses. Storage keys and owners stay internal."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    format: Literal["safetensors", "npz"]
    sha256: str = Field(description="SHA-256 of the uploaded file")
    size_bytes: int
    n: int = Field(description="Number of examples (the first dimension of x and y)")
    x_shape: list[int]
    y_shape: list[int]
    x_dtype: str
    y_dtype: str
    kind: Literal["xy", "tokens"] = Field(
        "xy", description="xy: tensors x and y. tokens: input_ids [N, T] (+ attention_mask, labels); then x_* describe "
        "input_ids and y_* the labels (input_ids when there are none)")
    max_token_id: int | None = Field(None, description="Token datasets: the largest id in input_ids")
    seq_len: int | None = Field(None, description="Token datasets: T, the tokens per sequence")
    created_at: datetime


class DatasetList(BaseModel):
    items: list[DatasetPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")
