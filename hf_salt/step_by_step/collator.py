"""`StepByStepCollator`: one example -> two task views (label, rationale), padded for the model type.

Encoder-decoder (T5): `input_ids`/`attention_mask` = prefixed input, `labels` = target padded with -100.
Decoder-only: prompt (prefix + input + separator) and target (+ EOS) are concatenated and LEFT-padded, so
every target ends at the last position: the loss then needs logits for the last few positions only, and
the training layout matches left-padded generation (explicit `position_ids` make padding invisible).
Prompt tokens and pads are -100. Causal batches also carry `prompt_input_ids`/`prompt_attention_mask`
(the label prompt alone, left-padded) for generation at evaluation.

The rationale view holds only the rows that have a rationale; rows without one train on the label task.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
RAW_COLUMNS = ("input", "label", "rationale", "llm_label")


class StepByStepCollator:
    """Tokenizes raw rows (`input`, `label`, `rationale`, `llm_label`) or pads pre-tokenized ones.

    `stats` counts, over every row tokenized by this collator: `rows`, `no_rationale`, `empty_input`,
    `truncated_source`, `truncated_target`, `truncated_rationale`, `no_label`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        is_encoder_decoder: bool,
        label_prefix: str = "predict: ",
        rationale_prefix: str = "explain: ",
        max_source_length: int = 1024,
        max_target_length: int = 256,
        max_rationale_length: int = 256,
        use_llm_labels: bool = False,
        prompt_separator: str = "\n",
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            if is_encoder_decoder or tokenizer.eos_token_id is None:
                raise ValueError(
                    "The tokenizer has no pad token. Set one before training, e.g. "
                    "`tokenizer.add_special_tokens({'pad_token': '<pad>'})` and resize the model's embeddings."
                )
            # safe here: pads are found by position (attention mask / -100), never by token id
            logger.warning(
                "Tokenizer has no pad token; using its EOS token %r for padding.", tokenizer.eos_token
            )
            tokenizer.pad_token = tokenizer.eos_token
        if not is_encoder_decoder and tokenizer.eos_token_id is None:
            raise ValueError("A causal LM needs a tokenizer with an EOS token to end its targets.")
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.label_prefix = label_prefix
        self.rationale_prefix = rationale_prefix
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.max_rationale_length = max_rationale_length
        self.use_llm_labels = use_llm_labels
        self.prompt_separator = prompt_separator
        self.pad_to_multiple_of = pad_to_multiple_of
        self.stats: Counter[str] = Counter()
        self._sep_ids = (
            [] if is_encoder_decoder else tokenizer(prompt_separator, add_special_tokens=False)["input_ids"]
        )

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, args: Any, model: Any) -> StepByStepCollator:
        """Build from a `StepByStepConfig` and the model (its config says encoder-decoder or not)."""
        return cls(
            tokenizer,
            is_encoder_decoder=bool(getattr(model.config, "is_encoder_decoder", False)),
            label_prefix=args.label_prefix,
            rationale_prefix=args.rationale_prefix,
            max_source_length=args.max_source_length,
            max_target_length=args.max_target_length,
            max_rationale_length=args.max_rationale_length,
            use_llm_labels=args.use_llm_labels,
            prompt_separator=args.prompt_separator,
        )

    # ------------------------------------------------------------------ tokenization
    def _source(self, prefix: str, text: str) -> tuple[list[int], bool]:
        tok = self.tokenizer
        budget = self.max_source_length - len(self._sep_ids)
        ids = tok(prefix + text, add_special_tokens=True)["input_ids"]
        truncated = len(ids) > budget
        if truncated:  # let the tokenizer keep its special tokens (T5's final </s>)
            ids = tok(prefix + text, add_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
        return ids + self._sep_ids, truncated

    def _target(self, text: str, max_length: int) -> tuple[list[int], bool]:
        """Target ids ending in EOS: without it a model never learns to stop, and exact match fails.

        (T5 tokenizers add `</s>` themselves; many BPE tokenizers, the shipped one included, do not.)
        """
        tok = self.tokenizer
        if self.is_encoder_decoder:
            ids = tok(text_target=text, add_special_tokens=True)["input_ids"]
        else:
            ids = tok(text, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
            ids = ids + [tok.eos_token_id]
        truncated = len(ids) > max_length
        if truncated:
            ids = ids[: max_length - 1] + [ids[-1]]
        return ids, truncated

    def tokenize_row(self, example: dict[str, Any], *, train: bool = True) -> dict[str, Any]:
        """Both views of one raw row as token ids; empty lists mark a missing view.

        `train=False` (evaluation) keeps the gold label and skips the rationale view.
        """
        text = example.get("input") or ""
        gold = example.get("label")
        label = (
            (example.get("llm_label") or "")
            if (train and self.use_llm_labels)
            else ("" if gold is None else str(gold))
        )
        rationale = (example.get("rationale") or "").strip() if train else ""
        self.stats["rows"] += 1
        self.stats["empty_input"] += int(not text.strip())
        label_source, trunc = self._source(self.label_prefix, text)
        self.stats["truncated_source"] += int(trunc)
        if label.strip():
            label_target, trunc = self._target(label.strip(), self.max_target_length)
            self.stats["truncated_target"] += int(trunc)
        else:
            label_target = []
            self.stats["no_label"] += 1
        if rationale and train:
            rationale_source, _ = self._source(self.rationale_prefix, text)
            rationale_target, trunc = self._target(rationale, self.max_rationale_length)
            self.stats["truncated_rationale"] += int(trunc)
        else:
            rationale_source, rationale_target = [], []
            self.stats["no_rationale"] += int(train)
        return {
            "label_source": label_source,
            "label_target": label_target,
            "rationale_source": rationale_source,
            "rationale_target": rationale_target,
        }

    def report(self) -> str:
        """One log line with the counts of rows the data could not be used as-is."""
        s = self.stats
        return (
            f"step-by-step data: {s['rows']} rows; {s['no_rationale']} without a rationale (label task only); "
            f"{s['no_label']} without a label (rationale task only); {s['empty_input']} empty inputs; truncated: "
            f"{s['truncated_source']} inputs (> {self.max_source_length} tokens), {s['truncated_target']} labels, "
            f"{s['truncated_rationale']} rationales."
        )

    # ------------------------------------------------------------------ padding
    def _pad_len(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else ((n + m - 1) // m) * m

    def _seq2seq(self, sources: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Encoder-decoder view: transformers' own seq2seq collator (inputs padded by the tokenizer, labels with
        -100); an empty target becomes one ignored position, so the batch always has a label column."""
        collate = DataCollatorForSeq2Seq(
            self.tokenizer,
            pad_to_multiple_of=self.pad_to_multiple_of,
            label_pad_token_id=IGNORE_INDEX,
            return_tensors="pt",
        )
        rows = [{"input_ids": list(s), "labels": list(t) or [IGNORE_INDEX]} for s, t in zip(sources, targets)]
        batch = collate(rows)
        return {k: batch[k].long() for k in ("input_ids", "attention_mask", "labels")}

    def _causal(self, sources: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        length = self._pad_len(max(len(s) + len(t) for s, t in zip(sources, targets)))
        input_ids = torch.full((len(sources), length), pad, dtype=torch.long)
        attention = torch.zeros((len(sources), length), dtype=torch.long)
        labels = torch.full((len(sources), length), IGNORE_INDEX, dtype=torch.long)
        for i, (s, t) in enumerate(zip(sources, targets)):
            n = len(s) + len(t)
            input_ids[i, length - n :] = torch.tensor(s + t, dtype=torch.long)
            attention[i, length - n :] = 1
            if t:
                labels[i, length - len(t) :] = torch.tensor(t, dtype=torch.long)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        # a plain int (stays on the CPU): the loss needs logits for the last `target_positions` only
        target_positions = max(1, max(len(t) for t in targets))
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids,
            "labels": labels,
            "target_positions": target_positions,
        }

    def _view(self, sources: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        return self._seq2seq(sources, targets) if self.is_encoder_decoder else self._causal(sources, targets)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [f if "label_source" in f else self.tokenize_row(f) for f in features]
        batch = self._view([r["label_source"] for r in rows], [r["label_target"] for r in rows])
        if not self.is_encoder_decoder:
            prompts = self._causal([r["label_source"] for r in rows], [[] for _ in rows])
            batch["prompt_input_ids"] = prompts["input_ids"]
            batch["prompt_attention_mask"] = prompts["attention_mask"]
        with_rationale = [r for r in rows if r["rationale_target"]]
        if with_rationale:
            view = self._view(
                [r["rationale_source"] for r in with_rationale],
                [r["rationale_target"] for r in with_rationale],
            )
            batch.update({f"rationale_{k}": v for k, v in view.items()})
        return batch
