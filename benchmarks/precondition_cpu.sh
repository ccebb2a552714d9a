#!/usr/bin/env bash
# Precondition of the small-vocabulary CPU scale: does the 2x-wide student (llama-micro-2x), trained plainly,
# end clearly below its teacher (llama-micro) trained on the same tokens in the same order?
# One thread each; the two runs go side by side (one per core). Usage: bash benchmarks/precondition_cpu.sh [STEPS] [OUT]
# Peak LRs: TEACHER_LR and STUDENT_LR (default 3e-3 both, as benchmarks/configs/cpu_small_vocab.yaml).
# Needs the corpus slice and tokenizer of benchmarks/build_code_tokenizer.py (see its docstring).
set -euo pipefail
STEPS=${1:-1600}
OUT=${2:-outputs/precondition-cpu}
DATA=${DATA:-outputs/code-corpus/slice-48mb/data}
TOK=${TOK:-outputs/code-corpus/tokenizer-2048}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
common=(--tokenizer "$TOK" --corpus "$DATA" --block_size 128 --per_device_train_batch_size 16
        --max_steps "$STEPS" --warmup_steps $((STEPS / 20)) --lr_scheduler_type cosine --weight_decay 0.1
        --adam_beta2 0.95 --max_eval_blocks 256 --per_device_eval_batch_size 64 --eval_strategy steps
        --eval_steps $((STEPS / 4)) --logging_steps 50 --save_strategy no --report_to none --seed 0
        --data_seed 0 --use_cpu true --disable_tqdm true)
mkdir -p "$OUT"
python -m hf_salt.cli.main pretrain --model llama-micro --learning_rate "${TEACHER_LR:-3e-3}" \
    --output_dir "$OUT/teacher" "${common[@]}" > "$OUT/teacher.log" 2>&1 &
teacher=$!
python -m hf_salt.cli.main pretrain --model llama-micro-2x --learning_rate "${STUDENT_LR:-3e-3}" \
    --output_dir "$OUT/student" "${common[@]}" > "$OUT/student.log" 2>&1 &
student=$!
wait "$teacher" || { echo "teacher run failed: see $OUT/teacher.log" >&2; exit 1; }
wait "$student" || { echo "student run failed: see $OUT/student.log" >&2; exit 1; }
t=$(grep -o 'validation loss [0-9.]*' "$OUT/teacher.log" | tail -1 | awk '{print $3}')
s=$(grep -o 'validation loss [0-9.]*' "$OUT/student.log" | tail -1 | awk '{print $3}')
python -c "t, s = $t, $s; print(f'final validation loss: teacher {t:.4f}, student {s:.4f}, student - teacher {s - t:+.4f} (precondition: < -0.1)')"
