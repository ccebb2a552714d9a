"""`StepByStepTrainer`: distilling step-by-step (Hsieh et al. 2023, arXiv 2305.02301) as a Seq2SeqTrainer.

One model, two tasks sharing all weights: label prediction (`label_prefix` + input -> label) and rationale
generation (`rationale_prefix` + input -> LLM rationale). Loss = L_label + lambda * L_rationale, where each
task's summed token loss is divided by that task's token count over the WHOLE optimizer step (all
micro-batches of gradient accumulation, all data-parallel ranks). So GA=2 x b gives the gradients of
GA=1 x 2b, and a batch with few rationale tokens does not change the weight of the rationale task.
Works for encoder-decoder (T5) and decoder-only causal LMs. Evaluation runs the label task only.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import EvalPrediction, PreTrainedModel, Seq2SeqTrainer

from hf_salt.checks import check_positions
from hf_salt.step_by_step.collator import IGNORE_INDEX, RAW_COLUMNS, StepByStepCollator
from hf_salt.step_by_step.config import StepByStepConfig
from hf_salt.step_by_step.data import from_prompt_completion
from hf_salt.trainer_base import TrainerBase, paper

logger = logging.getLogger(__name__)

MODEL_TAGS = ["hf-salt", "distilling-step-by-step"]


class StepByStepTrainer(TrainerBase, Seq2SeqTrainer):
    """Seq2SeqTrainer for distilling step-by-step; see the module docstring.

    Args are those of `Seq2SeqTrainer` plus `peft_config` (a PEFT config applied with
    `hf_salt.peft_utils.apply_peft`). Datasets hold raw columns `input`, `label`, `rationale`, `llm_label`
    (as `hf_salt.data.load_step_by_step` returns them); they are tokenized once here, with a log line of
    the rows without rationale, without label, and truncated.
    """

    # compute_loss divides by the token counts of the whole optimizer step: never divide again by GA
    loss_is_scaled_for_ga = True
    _name = "Distilling step-by-step"
    _method = "step_by_step"
    _tag_names = MODEL_TAGS
    _paper = paper("step_by_step")
    _metric_names = ("loss_label", "loss_rationale")

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: StepByStepConfig | None = None,
        data_collator: StepByStepCollator | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        peft_config: Any = None,
        compute_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("StepByStepTrainer needs a model (e.g. hf_salt.zoo.build_model('t5-tiny')).")
        args = args if args is not None else StepByStepConfig(output_dir="step_by_step_output")
        if not isinstance(args, StepByStepConfig):
            raise TypeError(f"args must be a StepByStepConfig, got {type(args).__name__}.")
        if processing_class is None and data_collator is None:
            raise ValueError(
                "Pass processing_class=tokenizer (or a ready StepByStepCollator as data_collator)."
            )
        if data_collator is None:
            data_collator = StepByStepCollator.from_config(processing_class, args, model)
        if processing_class is None:
            processing_class = data_collator.tokenizer
        if peft_config is not None:
            from hf_salt.peft_utils import apply_peft

            model = apply_peft(model, peft_config, args=args, reads_output_layer=False)
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.collator_stats: dict[str, int] = {}
        self._check_config, self._check_generation = model.config, args.generation_max_length
        train_dataset = self._tokenize(train_dataset, data_collator, train=True)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._tokenize(v, data_collator, train=False) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._tokenize(eval_dataset, data_collator, train=False)
        if compute_metrics is None and args.predict_with_generate:
            compute_metrics = self._default_compute_metrics
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            **kwargs,
        )
        forward = inspect.signature(self.accelerator.unwrap_model(self.model).forward).parameters
        self._accepts_logits_to_keep = "logits_to_keep" in forward
        self._last_logged_step = -1
        self._init_base()

    # ------------------------------------------------------------------ data
    def _tokenize(
        self, dataset: Dataset | None, collator: StepByStepCollator, *, train: bool
    ) -> Dataset | None:
        """Tokenize raw rows once (not every epoch) and log the counts the issue asks for."""
        if isinstance(dataset, Dataset):  # TRL prompt/completion rows -> input/label (/rationale)
            dataset = from_prompt_completion(dataset, collator.tokenizer)
        if dataset is None or not isinstance(dataset, Dataset) or "input" not in dataset.column_names:
            return dataset
        before = collator.stats.copy()
        tokenized = dataset.map(
            lambda ex: collator.tokenize_row(ex, train=train),
            remove_columns=[c for c in dataset.column_names if c in RAW_COLUMNS],
            desc="step-by-step: tokenizing",
            load_from_cache_file=False,
        )
        stats = collator.stats - before
        if train and len(tokenized) == 0:
            raise ValueError("The training set is empty (0 rows): check the data file and --train_fraction.")
        if not collator.is_encoder_decoder:
            self._check_lengths(tokenized, train)
        if train:
            self.collator_stats = dict(stats)
            # a row with neither view contributes nothing: drop it rather than feed an empty batch row
            empty = [i for i, t in enumerate(tokenized["label_target"]) if not t]
            empty = [i for i in empty if not tokenized[i]["rationale_target"]]
            if empty:
                keep = sorted(set(range(len(tokenized))) - set(empty))
                tokenized = tokenized.select(keep)
                logger.warning(
                    "step-by-step: dropped %d train rows with neither a label nor a rationale.", len(empty)
                )
        if stats["no_rationale"] or stats["truncated_source"] or stats["empty_input"] or stats["no_label"]:
            logger.warning("%s (%s split)", _report(collator, stats), "train" if train else "eval")
        else:
            logger.info("%s (%s split)", _report(collator, stats), "train" if train else "eval")
        return tokenized

    def _check_lengths(self, tokenized: Dataset, train: bool) -> None:
        """A causal LM reads prompt + target in one sequence: refuse rows longer than its positions."""
        config = self._check_config
        extra = 0 if train else (self._check_generation or 0)
        longest = 0
        for view in ("label", "rationale") if train else ("label",):
            for src, tgt in zip(tokenized[f"{view}_source"], tokenized[f"{view}_target"]):
                longest = max(longest, len(src) + (len(tgt) if train else extra))
        check_positions(
            longest,
            config,
            f"StepByStepTrainer ({'train' if train else 'eval'} split)",
            "Lower max_source_length, max_rationale_length, max_target_length or generation_max_length.",
        )

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval", **gen_kwargs
    ):
        """Also takes raw rows (input / label columns), e.g. the test split reported once after training."""
        if isinstance(eval_dataset, Dataset):
            eval_dataset = self._tokenize(eval_dataset, self.data_collator, train=False)
        return super().evaluate(
            eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs
        )

    # ------------------------------------------------------------------ token counts (GA / DDP)
    def _count_tokens(self, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            return torch.zeros((), dtype=torch.long)
        labels = labels if self.is_encoder_decoder else labels[..., 1:]
        return labels.ne(IGNORE_INDEX).sum()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Label and rationale token counts, `tensor([n_label, n_rationale])`, summed over the step (and ranks)."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        counts = torch.stack(
            [
                sum(
                    (self._count_tokens(b["labels"]) for b in batch_samples),
                    torch.zeros((), dtype=torch.long),
                ),
                sum(
                    (self._count_tokens(b.get("rationale_labels")) for b in batch_samples),
                    torch.zeros((), dtype=torch.long),
                ),
            ]
        ).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts).reshape(-1, 2).sum(0)
        return counts

    # ------------------------------------------------------------------ loss
    def _task_loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], prefix: str
    ) -> tuple[torch.Tensor, Any]:
        """Summed token cross-entropy of one view; only the logits the loss needs are computed."""
        labels = inputs[f"{prefix}labels"]
        kwargs: dict[str, Any] = {
            "input_ids": inputs[f"{prefix}input_ids"],
            "attention_mask": inputs[f"{prefix}attention_mask"],
            "use_cache": False,
        }
        if self.is_encoder_decoder:
            unwrapped = self.accelerator.unwrap_model(model)
            kwargs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
            outputs = model(**kwargs)
            logits, targets = outputs.logits, labels
        else:
            kwargs["position_ids"] = inputs[f"{prefix}position_ids"]
            # left padding: every target sits in the last `keep` positions, so skip the prompt's logits
            keep = int(inputs.get(f"{prefix}target_positions") or labels.shape[1] - 1)
            if self._accepts_logits_to_keep:
                kwargs["logits_to_keep"] = keep + 1
                outputs = model(**kwargs)
                logits = outputs.logits[:, :-1]
            else:
                outputs = model(**kwargs)
                logits = outputs.logits[:, -(keep + 1) : -1]
            targets = labels[:, -keep:]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return loss, outputs

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """L_label / N_label + lambda * L_rationale / N_rationale, N counted over the optimizer step."""
        training = model.training
        label_sum, outputs = self._task_loss(model, inputs, "")
        has_rationale = training and "rationale_labels" in inputs and self.args.rationale_weight > 0
        rationale_sum = (
            self._task_loss(model, inputs, "rationale_")[0] if has_rationale else label_sum.new_zeros(())
        )
        if (
            training
            and num_items_in_batch is not None
            and torch.is_tensor(num_items_in_batch)
            and num_items_in_batch.numel() == 2
        ):
            counts = num_items_in_batch.to(label_sum.device)
            scale = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        else:  # evaluation, or a caller without step counts: normalise by this batch
            counts = torch.stack(
                [self._count_tokens(inputs["labels"]), self._count_tokens(inputs.get("rationale_labels"))]
            )
            counts = counts.to(label_sum.device)
            scale = 1
        counts = counts.clamp(min=1).to(label_sum.dtype)
        loss_label = label_sum / counts[0]
        loss_rationale = rationale_sum / counts[1]
        loss = (loss_label + self.args.rationale_weight * loss_rationale) * scale
        if training:
            self._record(loss_label, loss_rationale, step_counts=scale > 1)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ logging
    def _record(self, loss_label: torch.Tensor, loss_rationale: torch.Tensor, *, step_counts: bool) -> None:
        """Buffer the task losses; the log shows their means over the logged optimizer steps (and ranks).

        Each micro-batch's loss is its share of the step's loss, so the values add up within a step and the
        weight counts steps. With step-global token counts (``step_counts``) each rank holds a share of the
        global step loss: ranks add up too, so each rank weighs a step 1/world; otherwise each rank has its own
        mean and the ranks are averaged."""
        step = self.state.global_step
        weight = 0.0
        if step != self._last_logged_step:
            weight = 1.0 / self.accelerator.num_processes if step_counts else 1.0
            self._last_logged_step = step
        self._metrics.add("loss_label", loss_label, weight)
        self._metrics.add("loss_rationale", loss_rationale, weight)

    # ------------------------------------------------------------------ evaluation (label task only)
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Label loss, and the generated label (prompt stripped for causal LMs) against the gold label."""
        inputs = self._prepare_inputs(inputs)
        label_inputs = {k: v for k, v in inputs.items() if not k.startswith("rationale_")}
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, label_inputs).detach()
        if prediction_loss_only or not self.args.predict_with_generate:
            return loss, None, None
        gen = dict(getattr(self, "_gen_kwargs", None) or {})
        gen.update(gen_kwargs)
        max_new = (
            gen.pop("max_new_tokens", None)
            or gen.pop("max_length", None)
            or self.args.generation_max_length
            or 64
        )
        gen.pop("max_length", None)
        tok = self.processing_class
        common = {"max_new_tokens": max_new, "pad_token_id": tok.pad_token_id, "do_sample": False, **gen}
        unwrapped = self.accelerator.unwrap_model(model)
        if self.is_encoder_decoder:
            generated = unwrapped.generate(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **common
            )
        else:
            prompt = inputs["prompt_input_ids"]
            generated = unwrapped.generate(
                input_ids=prompt,
                attention_mask=inputs["prompt_attention_mask"],
                eos_token_id=tok.eos_token_id,
                **common,
            )[:, prompt.shape[1] :]
        labels = inputs["labels"]
        if not self.is_encoder_decoder:  # keep only the target part of the row
            labels = labels[:, -int(inputs["target_positions"]) :]
        return loss, generated, labels

    def _default_compute_metrics(self, pred: EvalPrediction) -> dict[str, float]:
        """Decode generations and gold labels and score them (`accuracy`, `exact_match`)."""
        from hf_salt.step_by_step.metrics import compute_label_metrics

        tok = self.processing_class

        def decode(rows: np.ndarray) -> list[str]:
            rows = np.where(rows == IGNORE_INDEX, tok.pad_token_id, rows)
            return [t.strip() for t in tok.batch_decode(rows.tolist(), skip_special_tokens=True)]

        predictions = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return compute_label_metrics(
            decode(predictions), decode(pred.label_ids), metric=self.args.label_metric
        )

    # ------------------------------------------------------------------ model card
    def method_info(self) -> dict[str, Any]:
        """The card's method settings: lambda, prefixes, label source, architecture, data counts."""
        return {
            "rationale_weight": self.args.rationale_weight,
            "label_prefix": self.args.label_prefix,
            "rationale_prefix": self.args.rationale_prefix,
            "use_llm_labels": self.args.use_llm_labels,
            "architecture": "encoder-decoder" if self.is_encoder_decoder else "decoder-only",
            "label_metric": self.args.label_metric,
            "data_stats": dict(self.collator_stats),
            "paper": self._paper["title"],
        }


def _report(collator: StepByStepCollator, stats: Any) -> str:
    saved = collator.stats
    collator.stats = stats
    try:
        return collator.report()
    finally:
        collator.stats = saved
