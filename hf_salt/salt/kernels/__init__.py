"""Implementations of the fused KD loss (torch chunked, Liger); the API is hf_salt.salt.losses."""
