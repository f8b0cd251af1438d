#!/usr/bin/env bash
# Reproduces the paper's pipeline end to end: fetch assets, split the data, fine-tune with LoRA and fully,
# evaluate vanilla / LoRA / full and the three model-free baselines, then draw Fig. 3, Fig. 4, the loss curves
# and results/summary.md.
#
#   scripts/reproduce.sh               SmolLM2-135M on the embedded data/sample, on the CPU (the default)
#   scripts/reproduce.sh --data PATH   the same on a CloudEval-YAML copy (a directory or data.zip; an encrypted
#                                      zip reads CLOUDEVAL_ZIP_PASSWORD); derived configs go to out/configs/
#   scripts/reproduce.sh --paper       the paper's matrix: Mistral-7B, DeepSeek-Coder-6.7B, LLaMA3-8B × vanilla /
#                                      LoRA / full, 5 epochs, built with --features cuda; the weights must be in
#                                      the Hugging Face cache and the data at data/raw/data.zip (or --data PATH)
#   scripts/reproduce.sh --quick       a few steps of everything (smoke test); writes under out/quick/ only
#
# Options (each overrides the mode's choice, which is printed before anything runs):
#   --epochs N          training epochs            --max-seq-len N     training row length in tokens
#   --max-new-tokens N  generation budget per row  --limit N           evaluate only the first N test rows
#   --max-steps N       stop each training run after N optimiser steps
#   --variants LIST     question variants to train and evaluate on, comma-separated (original, simplified,
#                       translated); the split is recomputed for them under the output root's splits/
#   --output-root DIR   write checkpoints, records, configs and splits under DIR/{out,results,configs,splits}
#                       instead of out/, results/, out/configs/, out/splits/ (--quick: out/quick)
#   --no-fetch          skip scripts/fetch-assets.sh (the assets must already be in place)
#   --dry-run           print the settings and the plan, run nothing (derived configs are still written)
#   --fresh             delete this run's checkpoints and results first (otherwise training resumes from an
#                       existing checkpoint and evaluation resumes from existing predictions)
#   -h, --help          this text
#
# Every step prints the command it runs and how long it took. Training and evaluation are resumable: after an
# interruption, run the same command again.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}
die() {
    printf 'reproduce: error: %s\n' "$*" >&2
    exit 2
}
need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (try --help)"
}
need_count() {
    [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '$2'"
}

mode=sample
data=""
quick=0
fresh=0
fetch=1
dry_run=0
epochs=""
max_seq_len=""
max_new_tokens=""
limit=""
max_steps=""
output_root=""
variants=""
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --paper) mode=paper ;;
        --quick) quick=1 ;;
        --fresh) fresh=1 ;;
        --no-fetch) fetch=0 ;;
        --dry-run) dry_run=1 ;;
        --data) need_value "$@"; data=$2; shift ;;
        --epochs) need_value "$@"; need_count "$1" "$2"; epochs=$2; shift ;;
        --max-seq-len) need_value "$@"; need_count "$1" "$2"; max_seq_len=$2; shift ;;
        --max-new-tokens) need_value "$@"; need_count "$1" "$2"; max_new_tokens=$2; shift ;;
        --limit) need_value "$@"; need_count "$1" "$2"; limit=$2; shift ;;
        --max-steps) need_value "$@"; need_count "$1" "$2"; max_steps=$2; shift ;;
        --variants)
            need_value "$@"
            [[ $2 =~ ^(original|simplified|translated)(,(original|simplified|translated))*$ ]] ||
                die "--variants takes a comma-separated list of original, simplified, translated; got '$2'"
            variants=$2
            shift
            ;;
        --output-root) need_value "$@"; output_root=$2; shift ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

[[ -z $data || -e $data ]] || die "--data $data: no such file or directory"
if [[ -n $data ]]; then
    # Absolute, because every command runs from the repository root.
    data=$(cd "$(dirname "$data")" && pwd)/$(basename "$data")
fi
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
if [[ $mode == paper && -z $data && ! -e data/raw/data.zip ]]; then
    die "--paper reads data/raw/data.zip (CloudEval-YAML, not redistributed): put it there or pass --data PATH"
fi

# ---------------------------------------------------------------------------------------------------------------
# What to run. Each model is "<config stem>:<legend label>"; its configs are configs/<stem>_{lora,full}.toml.

if [[ $mode == paper ]]; then
    models=("mistral:Mistral-7B" "deepseek:DeepSeek-Coder-6.7B" "llama3:LLaMA3-8B")
    features=(--features cuda)
else
    models=("smollm2:SmolLM2-135M")
    features=()
fi

# The default must finish within 30 minutes on 2 CPU cores, so it trains less than the configs say: the original
# phrasing only (one row per problem: 33 optimiser steps per epoch), 2 epochs, rows cut at 384 tokens; it evaluates
# every test row of that phrasing with 256 new tokens. Timed with `time scripts/reproduce.sh --fresh` (release build
# already done; README "Results" has the measurement). Re-time after changing these. The paper mode keeps its
# configs' values (5 epochs, max_seq_len 2048, max_new_tokens 1024, every test row).
if [[ $mode == sample && $quick == 0 ]]; then
    : "${variants:=original}" "${epochs:=2}" "${max_seq_len:=384}" "${max_new_tokens:=256}"
fi
if ((quick)); then
    : "${variants:=original}" "${epochs:=1}" "${max_seq_len:=128}" "${max_new_tokens:=8}" "${limit:=2}"
    : "${max_steps:=2}"
    : "${output_root:=out/quick}"
fi

out_root=out
results_root=results
config_dir=out/configs
split_dir=out/splits
if [[ -n $output_root ]]; then
    out_root=$output_root/out
    results_root=$output_root/results
    config_dir=$output_root/configs
    split_dir=$output_root/splits
fi

# ---------------------------------------------------------------------------------------------------------------
# TOML helpers for the derived configs (our configs keep one `key = value` per line).

# toml_string VALUE: VALUE as a TOML basic string.
toml_string() {
    local value=${1//\\/\\\\}
    printf '"%s"' "${value//\"/\\\"}"
}

# set_key FILE SECTION KEY VALUE: sets `KEY = VALUE` in [SECTION], appending it to the section when absent.
set_key() {
    local file=$1 section=$2 key=$3 value=$4
    awk -v header="[$section]" -v key="$key" -v value="$value" '
        function add() { if (inside && !done) { print key " = " value; done = 1 } }
        /^\[/ { add(); inside = ($0 == header); if (inside) seen = 1 }
        inside && $0 ~ ("^" key "[ \t]*=") { print key " = " value; done = 1; next }
        { print }
        END { add(); if (!seen) { print ""; print header; print key " = " value } }
    ' "$file" >"$file.partial"
    mv "$file.partial" "$file"
}

# get_key FILE SECTION KEY: the raw value of KEY in [SECTION] (comment stripped), or nothing.
get_key() {
    awk -v header="[$2]" -v key="$3" '
        /^\[/ { inside = ($0 == header) }
        inside && $0 ~ ("^" key "[ \t]*=") {
            sub("^" key "[ \t]*=[ \t]*", ""); sub("[ \t]+#.*$", ""); print; exit
        }
    ' "$1"
}

# ---------------------------------------------------------------------------------------------------------------
# The split: data/sample uses the committed manifest (regenerated byte-identically); --data gets its own.

split_name=""
split_path=""
if [[ -n $data ]]; then
    split_name=cloudeval
    split_path=$split_dir/$split_name.json
elif [[ $mode == sample ]]; then
    split_name=sample
    split_path=data/splits/sample.json
    [[ -n $output_root ]] && split_path=$split_dir/$split_name.json
fi
if [[ -n $split_name && -n $variants ]]; then
    # A manifest records the hash of what was loaded, so a variant subset needs its own (same problems per side).
    split_name=$split_name-${variants//,/-}
    split_path=$split_dir/$split_name.json
    # The embedded run's results are committed, so its manifest must be too (eval score rereads it).
    [[ $mode == sample && -z $data && -z $output_root ]] && split_path=data/splits/$split_name.json
fi

# derive STEM METHOD: writes the derived config for configs/STEM_METHOD.toml and prints its path.
derive() {
    local source=configs/$1_$2.toml
    local target=$config_dir/$1_$2.toml
    [[ -f $source ]] || die "missing $source"
    mkdir -p "$config_dir"
    {
        printf '# Derived by scripts/reproduce.sh from %s; edit the original, not this file.\n' "$source"
        cat "$source"
    } >"$target"
    if [[ -n $data ]]; then
        set_key "$target" data path "$(toml_string "$data")"
    fi
    if [[ -n $split_path && $mode == sample ]]; then
        set_key "$target" data split "$(toml_string "$split_path")"
    fi
    if [[ -n $variants ]]; then
        local list
        list=$(printf '"%s", ' ${variants//,/ })
        set_key "$target" data variants "[${list%, }]"
    fi
    [[ -n $epochs ]] && set_key "$target" optim epochs "$epochs"
    [[ -n $max_seq_len ]] && set_key "$target" optim max_seq_len "$max_seq_len"
    [[ -n $max_new_tokens ]] && set_key "$target" eval max_new_tokens "$max_new_tokens"
    printf '%s\n' "$target"
}

if [[ $mode == paper ]]; then
    # The paper configs split with [data.split_params] (seed 42, by problem, 25% test); a manifest would conflict
    # with it, so only the data path changes and train computes that seeded split itself (saved in out/<run>/).
    split_name=""
    split_path=""
fi

# ---------------------------------------------------------------------------------------------------------------
# The plan: a list of steps, printed in full before the first one runs.

step_titles=()
step_commands=()
add_step() {
    local title=$1
    shift
    step_titles+=("$title")
    step_commands+=("$(printf '%q ' "$@")")
}

if ((fetch)); then
    add_step "fetch the pinned offline assets" scripts/fetch-assets.sh
fi
for package in task train eval plot; do
    extra=()
    [[ $package == train || $package == eval ]] && extra=("${features[@]}")
    add_step "build $package (release)" cargo build --release -p "$package" "${extra[@]}"
done

if [[ -n $split_name ]]; then
    split_source=${data:-data/sample}
    add_step "split $split_source → $split_path" \
        cargo run --release --quiet -p task --bin split -- --data "$split_source" --name "$split_name" \
        --out-dir "$(dirname "$split_path")" ${variants:+--variants "$variants"}
fi

train_flags=(--results-dir "$results_root" --out-dir "$out_root")
[[ -n $max_steps ]] && train_flags+=(--max-steps "$max_steps")
baseline_flags=(--results-dir "$results_root")
[[ -n $limit ]] && baseline_flags+=(--limit "$limit")
eval_flags=("${baseline_flags[@]}")
[[ -n $max_new_tokens ]] && eval_flags+=(--max-new-tokens "$max_new_tokens")

derived_configs=()
cleanup_dirs=()
first_config=""
for entry in "${models[@]}"; do
    stem=${entry%%:*}
    label=${entry#*:}
    for method in lora full; do
        config=$(derive "$stem" "$method")
        derived_configs+=("$config")
        [[ -z $first_config ]] && first_config=$config
        run=$(get_key "$config" output run | tr -d '"')
        [[ -n $run ]] || die "$config has no output.run"
        cleanup_dirs+=("$out_root/$run" "$results_root/$run")
        resume=()
        if ((!fresh)) && [[ -d $out_root/$run/checkpoint ]]; then
            resume=(--resume)
        fi
        add_step "fine-tune $label with $method (${run})" \
            cargo run --release --quiet -p train "${features[@]}" -- --config "$config" "${train_flags[@]}" \
            "${resume[@]}"
    done
done

for entry in "${models[@]}"; do
    stem=${entry%%:*}
    label=${entry#*:}
    config=$config_dir/${stem}_lora.toml
    source=$(get_key "$config" model source | tr -d '"')
    cleanup_dirs+=("$results_root/$stem-vanilla")
    add_step "evaluate vanilla $label" \
        cargo run --release --quiet -p eval "${features[@]}" -- --base "$source" --config "$config" \
        --run-name "$stem-vanilla" --label "$label" "${eval_flags[@]}"
    for method in lora full; do
        run=$(get_key "$config_dir/${stem}_$method.toml" output run | tr -d '"')
        add_step "evaluate $label $method" \
            cargo run --release --quiet -p eval "${features[@]}" -- --model "$out_root/$run" --label "$label" \
            "${eval_flags[@]}"
    done
done

for baseline in echo nearest echo-or-nearest; do
    cleanup_dirs+=("$results_root/baseline-$baseline")
    add_step "evaluate the $baseline baseline" \
        cargo run --release --quiet -p eval "${features[@]}" -- --baseline "$baseline" --config "$first_config" \
        --run-name "baseline-$baseline" "${baseline_flags[@]}"
done

add_step "draw Fig. 3, Fig. 4, loss curves and summary.md" \
    cargo run --release --quiet -p plot -- --results "$results_root" --out "$results_root/figures" \
    --summary "$results_root/summary.md"

# ---------------------------------------------------------------------------------------------------------------
# Say what will happen, then do it.

describe() {
    local config=$1
    printf '  %-34s epochs=%s max_seq_len=%s max_new_tokens=%s\n  %-34s data=%s variants=%s split=%s\n' \
        "$config" "$(get_key "$config" optim epochs)" "$(get_key "$config" optim max_seq_len)" \
        "$(get_key "$config" eval max_new_tokens)" "" "$(get_key "$config" data path)" \
        "$(get_key "$config" data variants)" "$(get_key "$config" data split)"
}

printf 'reproduce: mode=%s%s, %d CPU cores, started %s\n' "$mode" "$( ((quick)) && printf ' (quick)')" \
    "$(nproc 2>/dev/null || echo '?')" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
printf 'settings (derived configs):\n'
for config in "${derived_configs[@]}"; do
    describe "$config"
done
printf '  evaluation: %s rows of the test split, max_new_tokens=%s\n' "${limit:-all}" \
    "${max_new_tokens:-per config}"
[[ -n $max_steps ]] && printf '  each training run stops after %d optimiser steps\n' "$max_steps"
printf '  checkpoints → %s/, records → %s/\n' "$out_root" "$results_root"
printf 'plan (%d steps):\n' "${#step_titles[@]}"
for i in "${!step_titles[@]}"; do
    printf '  %2d. %s\n' $((i + 1)) "${step_titles[$i]}"
done

if ((dry_run)); then
    printf 'commands:\n'
    for i in "${!step_commands[@]}"; do
        printf '  %2d. %s\n' $((i + 1)) "${step_commands[$i]}"
    done
    exit 0
fi
if ((fresh)); then
    printf 'fresh start: removing %s\n' "${cleanup_dirs[*]}"
    rm -rf -- "${cleanup_dirs[@]}"
fi

started=$(date +%s)
clock() {
    local seconds=$(($(date +%s) - started))
    printf '%02d:%02d' $((seconds / 60)) $((seconds % 60))
}
for i in "${!step_titles[@]}"; do
    printf '\n[%s] step %d/%d: %s\n  $ %s\n' "$(clock)" $((i + 1)) "${#step_titles[@]}" "${step_titles[$i]}" \
        "${step_commands[$i]}"
    step_start=$(date +%s)
    if ! eval "${step_commands[$i]}"; then
        printf '\n[%s] step %d/%d failed: %s\n' "$(clock)" $((i + 1)) "${#step_titles[@]}" "${step_titles[$i]}" >&2
        printf 'rerun the same command to resume (or add --fresh to start over)\n' >&2
        exit 1
    fi
    printf '[%s] step %d done in %ds\n' "$(clock)" $((i + 1)) $(($(date +%s) - step_start))
done
printf '\n[%s] done: figures in %s/figures/, tables in %s/summary.md\n' "$(clock)" "$results_root" "$results_root"
