"""Checkpoint responses. Storage keys and owners stay internal."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    collection: str | None = Field(description="Groups checkpoints, e.g. one training run")
    step: int | None = Field(description="Training step this checkpoint was saved at")
    format: Literal["safetensors", "pt", "pt2"]
    sha256: str = Field(description="SHA-256 of the stored file: the uploaded file, or for a save_pretrained "
                        "archive the one safetensors file its weights were merged into")
    size_bytes: int = Field(description="Size of the stored file")
    architecture: dict[str, Any] | None = Field(
        description="The architecture config with defaults filled in (null for .pt2 archives); for Hugging Face "
        'checkpoints {"kind": "hf", "task": ..., "config": <config.json>}'
    )
    num_params: int = Field(description="Number of trainable parameters (buffers excluded, tied parameters once)")
    created_at: datetime


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")
