"""Config docstrings list every field of SALT's and step-by-step's own settings, with the text of its ``--help``."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from transformers import Seq2SeqTrainingArguments

from hf_salt import SALTConfig, StepByStepConfig
from hf_salt.config_docs import document_fields


@pytest.mark.parametrize("cls", [SALTConfig, StepByStepConfig])
def test_every_own_field_is_documented_with_its_help(cls) -> None:
    doc = inspect.cleandoc(cls.__doc__)
    inherited = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)} - set(cls.__annotations__)
    own = [f for f in dataclasses.fields(cls) if f.name not in inherited and not f.name.startswith("_")]
    assert own
    for f in own:
        assert f"\n    {f.name} (`" in doc, f.name
        first_words = " ".join(f.metadata["help"].split()[:4])
        assert first_words in " ".join(doc.split()), f.name


def test_a_forgotten_field_is_an_error() -> None:
    @dataclasses.dataclass
    class Config:
        """A config."""

        a: int = dataclasses.field(default=1, metadata={"help": "the a"})
        b: int = dataclasses.field(default=2, metadata={"help": "the b"})

    with pytest.raises(TypeError, match=r"undocumented fields \['b'\]"):
        document_fields({"Group": ("a",)})(Config)
    with pytest.raises(TypeError, match=r"unknown fields \['c'\]"):
        document_fields({"Group": ("a", "b", "c")})(Config)
