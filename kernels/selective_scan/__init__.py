"""Selective scan (Mamba-1): the sequential oracle, the chunked PyTorch path, the step update."""

from .chunked import default_chunk_size, selective_scan_chunked
from .naive import (
    check_scan_inputs,
    check_seq_idx,
    selective_scan_ref,
    selective_state_update_ref,
    seq_idx_from_cu_seqlens,
)

__all__ = [
    "check_scan_inputs",
    "check_seq_idx",
    "default_chunk_size",
    "selective_scan_chunked",
    "selective_scan_ref",
    "selective_state_update_ref",
    "seq_idx_from_cu_seqlens",
]
